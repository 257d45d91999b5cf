"""What services need to set things in motion: the outbox (through `change()`), and for the few
things that are not changes of stored data, the bus and the job queue themselves."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from litestar import Request

from app.job_queue import JobQueue
from app.outbox.change import Change, recorded_change
from app.outbox.relay import Relay
from app.realtime.bus import EventBus
from app.realtime.events import Event
from app.settings import Settings
from app.webhooks.services import record_deliveries

log = logging.getLogger(__name__)


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

    async def published(self, events: list[Event]) -> None:
        """Events published straight on the bus (not through the outbox: an integrator's custom event,
        an announcement) reach the webhooks too; if recording fails, they reach the streams only."""
        try:
            await record_deliveries(events, None, self.bus.redis)
        except Exception as exc:  # the event is out already: it must not turn into an error answer
            log.warning("webhook deliveries of %d published events not recorded: %s", len(events), exc)


def make_effects(bus: EventBus, jobs: JobQueue, settings: Settings, relay_node: str | None = None) -> Effects:
    """The effects of one process; its relay reads on the database node `relay_node`, and records
    the webhooks' deliveries of every event it publishes (app/webhooks/services.py)."""

    async def record(events: list[Event]) -> None:
        await record_deliveries(events, relay_node, bus.redis)

    return Effects(bus, jobs, settings, Relay(bus, jobs, relay_node, after_publish=record))


async def provide_effects(request: Request[Any, Any, Any]) -> Effects:
    """Dependency: this process's effects."""
    effects: Effects = request.app.state.effects
    return effects
