"""Prometheus metrics: jobs by status (read from the store at scrape time, so every API and
worker process agrees) and HTTP latency by route template (bounded label cardinality)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_schemas.jobs import JobStatus

log = logging.getLogger(__name__)


class JobsCollector(Collector):
    """``lth_jobs{status=…}`` from one GROUP BY per scrape; ``lth_store_up`` 0 if that fails."""

    def __init__(self, count_by_status: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_status

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lth_store_up", "Whether the job store answered the scrape.")
        try:
            counts = self._count()
        except Exception:
            log.exception("counting jobs for /metrics failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("lth_jobs", "Jobs by status, all tenants.", labels=["status"])
        for status in get_args(JobStatus):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs


class RoundsCollector(Collector):
    """``lth_round_duration_seconds``: a histogram of every finished round's wall time (ticket
    and controls), read from the store's round events so every API replica reports the same."""

    BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 48 * 3600)

    def __init__(self, durations: Callable[[], list[float]]) -> None:
        self._durations = durations

    def collect(self) -> Iterator[Metric]:
        try:
            durations = self._durations()
        except Exception:
            log.exception("reading round durations for /metrics failed")
            return
        buckets = [
            (str(float(bound)), sum(d <= bound for d in durations)) for bound in self.BUCKETS
        ]
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily(
            "lth_round_duration_seconds",
            "Wall time of finished pruning rounds (ticket and its controls).",
            buckets=buckets,
            sum_value=sum(durations),
        )


class QueueCollector(Collector):
    """``lth_queue_depth``: jobs waiting for a worker (the store's view, the source of truth)."""

    def __init__(self, count_by_status: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_status

    def collect(self) -> Iterator[Metric]:
        try:
            queued = self._count().get("queued", 0)
        except Exception:
            return
        depth = GaugeMetricFamily("lth_queue_depth", "Jobs queued and not yet taken by a worker.")
        depth.add_metric([], queued)
        yield depth


class Metrics:
    """One registry per app, so several apps (tests) never collide on global metric names."""

    def __init__(
        self,
        count_by_status: Callable[[], dict[str, int]],
        round_durations: Callable[[], list[float]] = list,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(JobsCollector(count_by_status))
        self.registry.register(QueueCollector(count_by_status))
        self.registry.register(RoundsCollector(round_durations))
        self.http_latency = Histogram(
            "lth_http_request_duration_seconds",
            "HTTP request latency until the response is complete, by route template.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
