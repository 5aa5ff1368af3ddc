"""How long a unit is held per request, per model: the basis of Retry-After (pool.py) and /metrics.

A client refused with 503 is told when to come back. A constant is wrong both ways: a queue of short
requests drains in a second or two, a queue of long generations takes minutes. So the pool measures how
long each lease of a model lasts (an exponentially weighted mean: recent requests count most) and
estimates the wait of a newcomer as the requests ahead of it, plus itself, times that time, shared by the
instances that can serve them at once; bounded to [1 s, the queue timeout].
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DEFAULT_SERVICE_TIME", "ServiceTimes"]

DEFAULT_SERVICE_TIME = 2.0  # seconds, before a model has served anything (a short chat on a device)
_ALPHA = 0.3  # weight of the newest measurement: about the last 5 requests dominate


class ServiceTimes:
    def __init__(self, default: float = DEFAULT_SERVICE_TIME) -> None:
        self.default = default
        self._mean: dict[str, float] = {}

    def record(self, model: str, seconds: float) -> None:
        old = self._mean.get(model)
        self._mean[model] = seconds if old is None else old + _ALPHA * (seconds - old)

    def mean(self, model: str) -> float:
        return self._mean.get(model, self.default)

    def models(self) -> list[str]:
        return sorted(self._mean)

    def wait(self, model: str, *, ahead: int, parallel: int, cap: float) -> float:
        """Seconds until a newcomer behind `ahead` waiting requests would get one of `parallel` units."""
        estimate = self.mean(model) * (ahead + 1) / max(1, parallel)
        return max(1.0, min(cap, estimate))

    def snapshot(
        self, parallel: Callable[[str], int], *, ahead: int, cap: float
    ) -> dict[str, tuple[float, float]]:
        """model → (mean seconds per request, the wait a newcomer would be told now), for /metrics."""
        return {
            m: (self.mean(m), self.wait(m, ahead=ahead, parallel=parallel(m), cap=cap)) for m in self.models()
        }
