"""The counts behind the admin's live dashboard (`GET /v1/admin/stats`).

Every status appears, with 0 when nothing has it, so a dashboard can draw a fixed set of tiles.
Two grouped counts over indexed status columns: cheap enough for a page that asks again, debounced,
after each booking event it hears.
"""

from typing import get_args

import msgspec
from piccolo.query.functions.aggregate import Count

from app.bookings.status import Status
from app.db.tables import Booking, EmailDelivery

EMAIL_STATUSES = ("queued", "sending", "sent", "failed")


class Stats(msgspec.Struct):
    bookings: dict[str, int]
    emails: dict[str, int]


async def _by_status(table: type[Booking] | type[EmailDelivery], statuses: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    rows = await table.select(table.status, Count()).group_by(table.status)
    counts.update({row["status"]: int(row["count"]) for row in rows})
    return counts


async def stats() -> Stats:
    """Bookings and email deliveries, counted by status."""
    return Stats(bookings=await _by_status(Booking, get_args(Status)),
                 emails=await _by_status(EmailDelivery, EMAIL_STATUSES))
