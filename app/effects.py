"""What a committed change sets in motion: events on the bus, and jobs for the workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request

from app.job_queue import JobQueue
from app.realtime.bus import EventBus
from app.settings import Settings


@dataclass(frozen=True)
class Effects:
    """The bus, the job queue and the settings both need, passed to services as one thing."""

    bus: EventBus
    jobs: JobQueue
    settings: Settings

    async def run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a job-queue method off the event loop (RQ and rq-scheduler speak synchronous Redis)."""
        return await asyncio.to_thread(call, *args, **kwargs)


async def provide_effects(request: Request[Any, Any, Any]) -> Effects:
    """Dependency: this process's effects."""
    effects: Effects = request.app.state.effects
    return effects
