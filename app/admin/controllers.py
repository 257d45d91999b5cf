"""`POST /v1/admin/announcements`, `GET /v1/admin/presence` and `GET /v1/admin/stats`."""

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide

from app.admin.stats import Stats, stats
from app.idempotency import IdempotencyKey, Remember, run_once
from app.realtime.events import BROADCAST, Event, now_rfc3339, role_channel
from app.security import AuthUser, admin_only, current_user
from app.wire import FreeText, Name

Audience = Literal["all", "customer", "provider", "admin"]


class AnnouncementCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: Name
    body: FreeText
    audience: Audience = "all"


class Announcement(msgspec.Struct):
    """`announcement`'s data."""

    title: str
    body: str
    audience: Audience


class AnnouncementRead(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(description="The id of the `announcement` event.")]
    title: str
    body: str
    audience: Audience


class Presence(msgspec.Struct):
    online: dict[str, int]
    streams: dict[str, int]


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    dependencies = {"user": Provide(current_user)}
    guards = [admin_only]

    @post("/announcements", operation_id="announce", status_code=202)
    async def announce(
        self, user: AuthUser, data: AnnouncementCreate, request: Request, idempotency_key: IdempotencyKey = None
    ) -> AnnouncementRead:
        """Publish an `announcement` to everyone or to one role (admins)."""
        state: Any = request.app.state
        channel = BROADCAST if data.audience == "all" else role_channel(data.audience)

        async def publish(remember: Remember | None) -> AnnouncementRead:
            # Nothing is stored but the event itself, so this publishes directly (its answer carries
            # the event's id). With a key, the bus deduplicates too: a retry after a crash between
            # the publish and the record gets the first event's id, not a second announcement.
            payload = Announcement(data.title, data.body, data.audience)
            dedup = f"announce:{user.id}:{idempotency_key}:{msgspec.structs.asdict(payload)}" if remember else None
            at = now_rfc3339()
            event_id, deduplicated = await state.bus.publish("announcement", [channel], payload, dedup, at)
            if not deduplicated:
                await state.effects.published([Event(event_id, "announcement", [channel], at,
                                                     msgspec.Raw(msgspec.json.encode(payload)))])
            result = AnnouncementRead(event_id, payload.title, payload.body, payload.audience)
            if remember is not None:
                await remember(result)
            return result

        return await run_once(user.id, idempotency_key, "announce", data, publish, AnnouncementRead)

    @get("/presence", operation_id="presence")
    async def presence(self, user: AuthUser, request: Request) -> Presence:
        """Users online by role and open streams by transport, across all API processes (admins)."""
        snapshot = await request.app.state.presence.snapshot()
        return Presence(online=snapshot["online"], streams=snapshot["streams"])


    @get("/stats", operation_id="stats")
    async def stats(self, user: AuthUser) -> Stats:
        """Counts for the admin's dashboard: bookings by status, email deliveries by status."""
        return await stats()
