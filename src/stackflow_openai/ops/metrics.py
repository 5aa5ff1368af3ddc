"""Prometheus metrics on a per-app `CollectorRegistry` (never the global default one).

Counters and histograms are updated as requests run (by `ObserveRequests`, `ObservedService` and the
device pools); device gauges (up, units by state, queue depth, memory, temperature) are read from the
devices when /metrics is scraped, so they are never stale between samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "stackflow_openai"
# Device work is slow: a setup takes seconds to minutes, a generation seconds.
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFT = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
_WAIT = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)
_SETUP = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_PROMPT_COMPLETION = ("prompt_tokens", "completion_tokens")
_INPUT_OUTPUT = ("input_tokens", "output_tokens")


class Metrics:
    """Every metric of one app; also the devices' `DeviceObserver`."""

    def __init__(self, devices: Callable[[], Sequence[Any]] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{_P}_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(f"{_P}_request_duration_seconds", "time to the end of the response",
                                 ["route"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.in_flight = Gauge(f"{_P}_requests_in_flight", "HTTP requests being served", registry=r)
        self.errors = Counter(
            f"{_P}_errors", "error responses by OpenAI error code", ["code", "status"], registry=r
        )
        self.ttft = Histogram(f"{_P}_time_to_first_token_seconds", "request start to first text (streams)",
                              ["model"], buckets=_TTFT, registry=r)  # fmt: skip
        self.tokens = Counter(f"{_P}_tokens", "prompt and completion tokens", ["model", "kind"], registry=r)
        self.waits = Histogram(f"{_P}_queue_wait_seconds", "time a request waited for a unit",
                               ["device", "model"], buckets=_WAIT, registry=r)  # fmt: skip
        self.setups = Histogram(f"{_P}_unit_setup_seconds", "time to set a unit up (model load)",
                                ["device", "model"], buckets=_SETUP, registry=r)  # fmt: skip
        self.device_errors = Counter(f"{_P}_device_errors", "device failures by StackFlow error code",
                                     ["device", "code"], registry=r)  # fmt: skip
        r.register(_DeviceCollector(devices))
        # Label children by label values, as `labels()` looks them up under a lock with checks on every
        # call (several times per request). The keys are the metrics' own series: no more of them.
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._token_series: dict[str, tuple[Any, Any]] = {}
        self._ttft_series: dict[str, Any] = {}
        self._wait_series: dict[tuple[str, str], Any] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- DeviceObserver --------------------------------------------------------------------------
    def queue_wait(self, device: str, model: str, seconds: float) -> None:
        child = self._wait_series.get((device, model))  # once per request: see __init__
        if child is None:
            child = self._wait_series[(device, model)] = self.waits.labels(device, model)
        child.observe(seconds)

    def unit_setup(self, device: str, model: str, seconds: float) -> None:
        self.setups.labels(device, model).observe(seconds)

    def device_error(self, device: str, code: str) -> None:
        self.device_errors.labels(device, code).inc()

    # ---- requests (ops/reqlog.py) -----------------------------------------------------------------
    def request(self, method: str, route: str, status: int, seconds: float, error: str | None) -> None:
        """One answered HTTP request: counted, timed, and counted as an error by code when >= 400."""
        series = self._request_series.get((method, route, status))
        if series is None:
            series = (self.requests.labels(method, route, str(status)), self.latency.labels(route))
            self._request_series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if status >= 400:
            self.errors.labels(error or f"http_{status}", str(status)).inc()

    # ---- services --------------------------------------------------------------------------------
    def usage(self, model: str, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        series = self._token_series.get(model)
        if series is None:
            series = self._token_series[model] = (
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
            )
        # Chat and completions name them prompt/completion tokens, the Responses API input/output.
        for child, key, other in zip(series, _PROMPT_COMPLETION, _INPUT_OUTPUT, strict=True):
            value = usage.get(key, usage.get(other))
            if isinstance(value, int) and value > 0:
                child.inc(value)

    def first_token(self, model: str, seconds: float) -> None:
        child = self._ttft_series.get(model)
        if child is None:
            child = self._ttft_series[model] = self.ttft.labels(model)
        child.observe(seconds)


class _DeviceCollector(Collector):
    """Gauges read from the devices at scrape time."""

    def __init__(self, devices: Callable[[], Sequence[Any]]) -> None:
        self._devices = devices

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic label sets: let the registry collect() to learn them

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(f"{_P}_device_up", "1 when the device answers its probes", labels=["device"])
        models = GaugeMetricFamily(
            f"{_P}_device_models", "models the device lists (lsmode)", labels=["device"]
        )
        units = GaugeMetricFamily(
            f"{_P}_units", "unit instances by state", labels=["device", "unit", "state"]
        )
        queue = GaugeMetricFamily(f"{_P}_queue_depth", "requests waiting for a unit", labels=["device"])
        memory = GaugeMetricFamily(
            f"{_P}_device_memory_bytes", "NPU/CMM memory (cmminfo)", labels=["device", "kind"]
        )
        temp = GaugeMetricFamily(
            f"{_P}_device_temperature_celsius", "SoC temperature (hwinfo)", labels=["device"]
        )
        cpu = GaugeMetricFamily(f"{_P}_device_cpu_load_percent", "CPU load (hwinfo)", labels=["device"])
        service = GaugeMetricFamily(f"{_P}_service_time_seconds", "recent time a request holds a unit (mean)",
                                    labels=["device", "model"])  # fmt: skip
        retry = GaugeMetricFamily(f"{_P}_retry_after_seconds", "Retry-After a request refused now would get",
                                  labels=["device", "model"])  # fmt: skip
        for device in self._devices():
            name = device.name
            up.add_metric([name], 1.0 if device.up else 0.0)
            models.add_metric([name], float(len(device.models)))
            for (unit, state), count in sorted(device.pool.unit_states().items()):
                units.add_metric([name, unit, state], float(count))
            queue.add_metric([name], float(device.pool.stats()["waiting"]))
            for model, (seconds, wait) in device.pool.estimates().items():
                service.add_metric([name, model], seconds)
                retry.add_metric([name, model], wait)
            if device.cmm is not None:
                for kind, kib in (
                    ("total", device.cmm.total),
                    ("used", device.cmm.used),
                    ("free", device.cmm.remain),
                ):
                    memory.add_metric([name, kind], float(kib) * 1024)
            if device.hw is not None:
                temp.add_metric([name], device.hw.temperature / 1000.0)
                cpu.add_metric([name], float(device.hw.cpu_loadavg))
        yield from (up, models, units, queue, memory, temp, cpu, service, retry)
