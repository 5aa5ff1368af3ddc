"""Retry-After from what the pool measures (issue 13, item 9): a burst of short requests is told to come
back in about the time the queue takes to drain, not a constant 10 s; /metrics shows the estimate."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from e2e_harness import Harness
from stackflow_openai.config import PoolSettings, Settings
from stackflow_openai.emulator import Timing
from stackflow_openai.stackflow.estimate import ServiceTimes

LLM = "qwen2.5-0.5B-p256-ax630c"


def test_the_estimate_follows_recent_requests_and_is_bounded() -> None:
    times = ServiceTimes(default=2.0)
    assert times.wait("m", ahead=0, parallel=1, cap=30) == 2.0  # nothing measured yet
    times.record("m", 0.4)
    assert times.mean("m") == 0.4
    assert times.wait("m", ahead=9, parallel=2, cap=30) == pytest.approx(2.0)  # 10 requests, 2 at a time
    assert times.wait("m", ahead=0, parallel=2, cap=30) == 1.0  # never below a second
    assert times.wait("m", ahead=1000, parallel=1, cap=30) == 30  # never above the queue timeout
    for _ in range(20):
        times.record("m", 10.0)
    assert times.mean("m") == pytest.approx(10.0, rel=0.01)  # recent requests dominate


def test_a_burst_is_told_to_retry_when_the_queue_will_have_drained() -> None:
    settings = Settings(pool=PoolSettings(queue_limit=4, queue_timeout=30))
    with Harness(settings=settings, timing=Timing(tokens_per_second=40)).start().serving() as h:
        body = {"model": LLM, "messages": [{"role": "user", "content": "one two three"}]}

        def post() -> httpx.Response:
            return httpx.post(f"{h.base_url}/chat/completions", json=body, timeout=30)

        for _ in range(3):  # the pool learns this model's time per request (~0.3 s: 12 tokens at 40/s)
            assert post().status_code == 200
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: post(), range(40)))
        refused = [r for r in answers if r.status_code == 503]
        assert len(refused) >= 20 and sum(r.status_code == 200 for r in answers) >= 6
        waits = {int(r.headers["retry-after"]) for r in refused}
        # At most 4 waiting + itself, 2 at a time, ~0.3 s each (more on a loaded machine): a second or
        # a few. It was a constant 10 s.
        assert waits and max(waits) <= 5, waits
        metrics = httpx.get(f"{h.base_url.removesuffix('/v1')}/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("stackflow_openai_retry_after_seconds{"))
        assert f'model="{LLM}"' in line and 1.0 <= float(line.rsplit(" ", 1)[1]) <= 30
        service = next(
            x for x in metrics.splitlines() if x.startswith("stackflow_openai_service_time_seconds{")
        )
        assert 0.05 < float(service.rsplit(" ", 1)[1]) < 2
        assert math.isfinite(float(service.rsplit(" ", 1)[1]))
        assert post().status_code == 200  # and after that wait, the queue has drained
