"""Liveness and readiness probes."""

from typing import Any

from litestar import Controller, Request, Response, get
from redis.asyncio import Redis

from app.db.tables import User
from app.errors import problem_response

SCHEDULER_KEY_PATTERN = "rq:scheduler_instance:*"


async def _database_ok() -> bool:
    try:
        await User.raw("SELECT 1")
    except Exception:
        return False
    return True


async def _redis_ok(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:
        return False


async def _scheduler_ok(redis: Redis) -> bool:
    """True when at least one rq-scheduler has registered itself and not its death."""
    try:
        async for key in redis.scan_iter(match=SCHEDULER_KEY_PATTERN, count=100):
            if not await redis.hexists(key, "death"):
                return True
    except Exception:
        return False
    return False


class HealthController(Controller):
    tags = ["health"]
    include_in_schema = True

    @get("/health", operation_id="health")
    async def health(self) -> dict[str, str]:
        """The process is alive (no dependency is checked)."""
        return {"status": "ok"}

    @get("/ready", operation_id="ready")
    async def ready(self, request: Request) -> Response[Any]:
        """The database, Redis and the scheduler are reachable; 503 names the one that is not."""
        redis: Redis = request.app.state.redis
        checks = {"database": await _database_ok(), "redis": await _redis_ok(redis)}
        checks["scheduler"] = checks["redis"] and await _scheduler_ok(redis)
        if all(checks.values()):
            return Response({"status": "ready", "checks": checks})
        down = ", ".join(name for name, ok in checks.items() if not ok)
        return problem_response(503, "Service unavailable", f"Not ready: {down} unreachable.", "unavailable",
                                {"checks": checks}, {"Retry-After": "5"})
