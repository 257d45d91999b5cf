"""The events of a resource change, recorded in the change's outbox."""

from __future__ import annotations

from app.outbox.change import Change
from app.realtime.events import resource_channel, role_channel
from app.resources.schemas import ResourceRead

PRICING_FIELDS = frozenset({"price_cents", "currency"})


def change_types(changed: set[str]) -> list[str]:
    """`resource.pricing_updated` for a price change, `resource.updated` for anything else (or both)."""
    types = ["resource.pricing_updated"] if changed & PRICING_FIELDS else []
    if changed - PRICING_FIELDS - {"updated_at"}:
        types.insert(0, "resource.updated")
    return types


def resource_changed(change: Change, resource: ResourceRead, event_types: list[str], was_active: bool) -> None:
    """Publish to the resource's followers and admins, and to customers while they could see it."""
    channels = [resource_channel(resource.id), role_channel("admin")]
    if resource.active or was_active:
        channels.insert(1, role_channel("customer"))
    for event_type in event_types:
        change.publish(event_type, channels, resource)
    if was_active and not resource.active:  # after its last event: only the owner and admins follow it now
        change.control({"drop_channel": resource_channel(resource.id), "keep_user": str(resource.owner_id)})
