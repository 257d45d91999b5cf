"""What services need to set things in motion: the outbox (through `change()`), and for the few
things that are not changes of stored data, the bus and the job queue themselves."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from litestar import Request

from app.job_queue import JobQueue
from app.outbox.change import Change, recorded_change
from app.outbox.relay import Relay
from app.realtime.bus import EventBus
from app.settings import Settings


@dataclass(frozen=True)
class Effects:
    """The relay, bus, job queue and settings, passed to services as one thing."""

    bus: EventBus
    jobs: JobQueue
    settings: Settings
    relay: Relay

    def change(self) -> AbstractAsyncContextManager[Change]:
        """A write transaction whose side effects are recorded with it (see app/outbox/change.py)."""
        return recorded_change(self.relay)


def make_effects(bus: EventBus, jobs: JobQueue, settings: Settings, relay_node: str | None = None) -> Effects:
    """The effects of one process; its relay reads on the database node `relay_node`."""
    return Effects(bus, jobs, settings, Relay(bus, jobs, relay_node))


async def provide_effects(request: Request[Any, Any, Any]) -> Effects:
    """Dependency: this process's effects."""
    effects: Effects = request.app.state.effects
    return effects
