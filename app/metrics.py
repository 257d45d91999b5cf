"""`GET /metrics` in the Prometheus text format, and the counters behind it.

The hot paths keep plain integers (the bus counts publishes, the hub counts deliveries); a scrape
copies them into Prometheus collectors, together with figures that live in Redis because other
processes produce them (RQ queue depths, emails sent/failed, reminders fired). Each app has its own
registry, so two apps in one process never collide.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis import Redis

from app.db.tables import OutboxEntry

STATS_KEY = "bookwire:stats"
"""A Redis hash of counters that workers increment: emails_sent, emails_failed, reminders_fired."""
WORKER_STATS = ("emails_sent", "emails_failed", "reminders_fired")
QUEUES = ("email", "default")


def count_worker_event(connection: Redis, name: str, amount: int = 1) -> None:
    """Add `amount` to the worker counter `name` (one of WORKER_STATS), for every API's scrape to see."""
    connection.hincrby(STATS_KEY, name, amount)


class Metrics:
    """The collectors of one API process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bookwire_http_requests", "HTTP requests by method and status class",
                                ["method", "status"], registry=self.registry)
        self.latency = Histogram(
            "bookwire_event_delivery_latency_seconds",
            "From publish (the stream id's Redis time) to handed to this process's connections",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=self.registry,
        )
        self.open_streams = Gauge("bookwire_open_streams", "Open event connections by transport", ["transport"],
                                  registry=self.registry)
        self.published = Gauge("bookwire_events_published", "Events published through this process",
                               registry=self.registry)
        self.delivered = Gauge("bookwire_events_delivered", "Event deliveries handed to connections here",
                               registry=self.registry)
        self.dropped = Gauge("bookwire_slow_subscribers_dropped", "Connections dropped for falling behind",
                             registry=self.registry)
        self.queue_depth = Gauge("bookwire_queue_depth", "Jobs waiting in each RQ queue", ["queue"],
                                 registry=self.registry)
        self.worker_stats = Gauge("bookwire_worker_events", "Counts kept by the workers", ["kind"],
                                  registry=self.registry)
        self.outbox_backlog = Gauge("bookwire_outbox_backlog", "Outbox rows committed and not yet carried out "
                                    "(cluster-wide: the same figure on every process)", registry=self.registry)

    async def render(self, state: Any) -> bytes:
        """Refresh the scraped figures and return the exposition text."""
        hub, bus, redis = state.hub, state.bus, state.redis
        for transport in ("sse", "poll"):
            self.open_streams.labels(transport).set(hub.count(transport))
        self.published.set(bus.published)
        self.delivered.set(hub.delivered)
        self.dropped.set(hub.overflowed)
        try:
            self.outbox_backlog.set(await OutboxEntry.count())
        except Exception:  # noqa: S110 - the database is down: serve what this process knows
            pass
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    pipe.llen(f"rq:queue:{queue}")
                pipe.hmget(STATS_KEY, list(WORKER_STATS))
                *depths, stats = await pipe.execute()
            for queue, depth in zip(QUEUES, depths, strict=True):
                self.queue_depth.labels(queue).set(depth)
            for kind, value in zip(WORKER_STATS, stats, strict=True):
                self.worker_stats.labels(kind).set(int(value or 0))
        except Exception:  # noqa: S110 - Redis down: serve what this process knows
            pass
        return generate_latest(self.registry)


def count_requests(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: count each HTTP response by method and status class (2xx, 4xx, ...)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        metrics: Metrics = scope["app"].state.metrics
        method = scope["method"]  # type: ignore[typeddict-item]  # an http scope has one

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.requests.labels(method, f"{message['status'] // 100}xx").inc()
            await send(message)

        await app(scope, receive, counting_send)

    return middleware


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics of this process."""
    body = await request.app.state.metrics.render(request.app.state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
