"""`GET /metrics` (this process) and `GET /metrics/cluster` (the whole deployment), in the
Prometheus text format, with prometheus_client.

`/metrics` holds only what this process knows: its HTTP requests (a counter, and a latency
histogram per route template, method and status class, both fed by `app/observe.py`), its open
streams, its event deliveries, and prometheus_client's process collector (CPU, RSS, open files).
Summing any of its series over all API processes gives the deployment's total.

`/metrics/cluster` holds the figures that live in Redis or the database and are the same whichever
process reads them — RQ queue depths, registered workers, the workers' counters, the outbox
backlog — as the `bookwire_cluster_*` families. Scrape it once per deployment (through the load
balancer or the service, as one target), never per process: then no cluster-wide value is counted
twice. `docs/decisions.md` ("Observability") says why this rather than a leader lock.

The hot paths keep plain integers (the bus counts publishes, the hub counts deliveries); a scrape
reads them through a collector, as counters. Each app has its own registry, so two apps in one
process never collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Controller, Request, Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis

from app.db.tables import OutboxEntry

STATS_KEY = "bookwire:stats"
"""A Redis hash of counters that workers increment: emails_sent, emails_failed, reminders_fired."""
WORKER_STATS = ("emails_sent", "emails_failed", "reminders_fired")
QUEUES = ("email", "default")
RQ_WORKERS_KEY = "rq:workers"
"""RQ's set of the registered workers (a worker adds itself at start, removes itself at stop)."""

LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def count_worker_event(connection: Redis, name: str, amount: int = 1) -> None:
    """Add `amount` to the worker counter `name` (one of WORKER_STATS), for the cluster scrape to see."""
    connection.hincrby(STATS_KEY, name, amount)


class _Scraped(Collector):
    """Metric families computed at the start of a scrape (from plain integers, Redis, the database)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


class Metrics:
    """The collectors of one API process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bookwire_http_requests", "HTTP requests by method and status class",
                                ["method", "status"], registry=self.registry)
        self.request_duration = Histogram(
            "bookwire_http_request_duration_seconds",
            "From the request's arrival to its response's headers, by route template, method and status class",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.latency = Histogram(
            "bookwire_event_delivery_latency_seconds",
            "From publish (the stream id's Redis time) to handed to this process's connections",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=self.registry,
        )
        self.open_streams = Gauge("bookwire_open_streams", "Open event connections by transport", ["transport"],
                                  registry=self.registry)
        self._counts = _Scraped()
        self.registry.register(self._counts)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info
        # (route, method, status) -> its two children: `labels()` takes a lock and builds a key per call.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.cluster_registry = CollectorRegistry()
        self._cluster = _Scraped()
        self.cluster_registry.register(self._cluster)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP response and its latency (called when its headers are sent)."""
        status_class = _STATUS_CLASSES[status // 100] if 1 <= status // 100 <= 5 else "other"
        key = (route, method, status_class)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, status_class),
                        self.request_duration.labels(route, method, status_class))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def render(self, state: Any) -> bytes:
        """This process's figures, as exposition text."""
        hub, bus = state.hub, state.bus
        for transport in ("sse", "poll"):
            self.open_streams.labels(transport).set(hub.count(transport))
        self._counts.families = [
            CounterMetricFamily("bookwire_events_published", "Events published through this process",
                                value=bus.published),
            CounterMetricFamily("bookwire_events_delivered", "Event deliveries handed to connections here",
                                value=hub.delivered),
            CounterMetricFamily("bookwire_slow_subscribers_dropped", "Connections dropped for falling behind",
                                value=hub.overflowed),
        ]
        return generate_latest(self.registry)

    async def render_cluster(self, state: Any) -> bytes:
        """The deployment's figures, as exposition text; a family whose source is down is left out
        (an absent series says "unknown", where a stale one would lie)."""
        families: list[Metric] = []
        try:
            backlog = await OutboxEntry.count()
        except Exception:  # noqa: S110 - the database is down: no figure rather than a stale one
            pass
        else:
            families.append(GaugeMetricFamily(
                "bookwire_cluster_outbox_backlog", "Outbox rows committed and not yet carried out", value=backlog))
        try:
            async with state.redis.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    pipe.llen(f"rq:queue:{queue}")
                pipe.scard(RQ_WORKERS_KEY)
                pipe.hmget(STATS_KEY, list(WORKER_STATS))
                *depths, workers, stats = await pipe.execute()
        except Exception:  # noqa: S110 - Redis is down: no figure rather than a stale one
            pass
        else:
            depth = GaugeMetricFamily("bookwire_cluster_queue_depth", "Jobs waiting in each RQ queue",
                                      labels=["queue"])
            for queue, value in zip(QUEUES, depths, strict=True):
                depth.add_metric([queue], value)
            events = CounterMetricFamily("bookwire_cluster_worker_events", "Counts kept by the workers",
                                         labels=["kind"])
            for kind, value in zip(WORKER_STATS, stats, strict=True):
                events.add_metric([kind], int(value or 0))
            families += [depth, events,
                         GaugeMetricFamily("bookwire_cluster_workers", "RQ workers registered", value=workers)]
        self._cluster.families = families
        return generate_latest(self.cluster_registry)


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class MetricsController(Controller):
    path = "/metrics"
    include_in_schema = False

    @get("/")
    async def process(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Prometheus metrics of this process."""
        body = await request.app.state.metrics.render(request.app.state)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @get("/cluster")
    async def cluster(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Prometheus metrics of the whole deployment (scrape once, not per process)."""
        body = await request.app.state.metrics.render_cluster(request.app.state)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
