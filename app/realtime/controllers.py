"""HTTP endpoints for long-poll and for integrators publishing custom events."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.params import Parameter

from app.errors import Unprocessable
from app.realtime import poll as long_poll
from app.realtime.access import EventPrincipal, connection_channels, event_principal
from app.realtime.events import Event, is_channel, now_rfc3339
from app.realtime.schemas import EventPublish, PollResult, PublishResult
from app.security import PUBLISH_SCOPE, admin_or_service, once_per_request

RESERVED_PREFIXES = ("booking.", "resource.", "notification.", "reminder.", "stream.", "system.", "announcement")


@once_per_request("publisher")
async def event_publisher(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Dependency of `POST /v1/events`: who publishes (`service:<sub>` or `user:<id>` of an admin);
    401 for a stream token, 403 for anyone else."""
    caller = await admin_or_service(request, PUBLISH_SCOPE, "publish")
    return f"service:{caller}" if isinstance(caller, str) else f"user:{caller.id}"


@once_per_request("event_principal")
async def poll_principal(request: ASGIConnection[Any, Any, Any, Any]) -> EventPrincipal:
    """Dependency of the long-poll: who polls (header token, or a stream token in `access_token`)."""
    return await event_principal(request.app.state.tokens, request.headers.get("authorization"),
                                 request.query_params.get("access_token"))


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]

    @get("/poll", operation_id="pollEvents", dependencies={"principal": Provide(poll_principal)})
    async def poll(
        self, request: Request, principal: EventPrincipal,
        cursor: Annotated[str | None, Parameter(description="the last cursor received; unreadable: 400")] = None,
        timeout: Annotated[int, Parameter(ge=0, le=60)] = 25,
        topics: Annotated[str | None, Parameter(max_length=5000)] = None,
        access_token: Annotated[str | None, Parameter(description="a stream token")] = None,  # read by the dependency
    ) -> PollResult:
        """Long-poll for events after `cursor`: at once when there are some, else held up to `timeout` seconds. Without
        a cursor, the current cursor at once."""
        state: Any = request.app.state
        channels = await connection_channels(principal.user, topics)
        await state.presence.seen(principal.user.id, principal.user.role)
        return await long_poll.poll(state.bus, state.hub, state.presence, principal.user, channels, cursor, timeout)

    @post("/", operation_id="publishEvent", status_code=202, dependencies={"publisher": Provide(event_publisher)})
    async def publish(self, request: Request, publisher: str, data: EventPublish) -> Response[PublishResult]:
        """Publish a custom event (admins, service tokens with `events:publish`): 202, or 200 for a repeated
        `dedup_key`."""
        state: Any = request.app.state
        if data.type.startswith(RESERVED_PREFIXES):
            raise Unprocessable.field("type", f"must not start with a reserved prefix ({', '.join(RESERVED_PREFIXES)})")
        for index, channel in enumerate(data.channels):
            if not is_channel(channel):
                raise Unprocessable.field(
                    f"channels.{index}", "must be broadcast, role:<role>, user:<id> or resource:<id>"
                )
        # A dedup key is the publisher's own: one integrator cannot suppress another's events.
        dedup_key = f"{publisher}\n{data.dedup_key}" if data.dedup_key is not None else None
        at = now_rfc3339()
        event_id, deduplicated = await state.bus.publish(data.type, data.channels, data.data, dedup_key, at)
        if not deduplicated:
            await state.effects.published([Event(event_id, data.type, list(dict.fromkeys(data.channels)), at,
                                                 msgspec.Raw(msgspec.json.encode(data.data)))])
        return Response(PublishResult(event_id, deduplicated), status_code=200 if deduplicated else 202)
