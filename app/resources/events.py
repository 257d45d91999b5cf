"""The events of a resource change, published after it is committed."""

from __future__ import annotations

import logging

from app.realtime.bus import EventBus
from app.realtime.events import resource_channel, role_channel
from app.resources.schemas import ResourceRead

log = logging.getLogger(__name__)

PRICING_FIELDS = frozenset({"price_cents", "currency"})


def change_types(changed: set[str]) -> list[str]:
    """`resource.pricing_updated` for a price change, `resource.updated` for anything else (or both)."""
    types = ["resource.pricing_updated"] if changed & PRICING_FIELDS else []
    if changed - PRICING_FIELDS - {"updated_at"}:
        types.insert(0, "resource.updated")
    return types


async def resource_changed(bus: EventBus, resource: ResourceRead, event_types: list[str], was_active: bool) -> None:
    """Publish to the resource's followers and admins, and to customers while they could see it."""
    channels = [resource_channel(resource.id), role_channel("admin")]
    if resource.active or was_active:
        channels.insert(1, role_channel("customer"))
    for event_type in event_types:
        try:
            await bus.publish(event_type, channels, resource)
        except Exception:
            log.exception("could not publish %s for resource %s", event_type, resource.id)
    if was_active and not resource.active:  # after its last event: only the owner and admins follow it now
        try:
            await bus.publish_control(
                {"drop_channel": resource_channel(resource.id), "keep_user": str(resource.owner_id)}
            )
        except Exception:
            log.exception("could not stop delivering the events of resource %s", resource.id)
