"""Constrained field types shared by the request schemas of every area.

Names and titles refuse every control character; free text allows `\\n` and `\\t` only. Times must
carry an offset (`tz=True`), so a naive time is a 422 rather than a silent guess.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from app.errors import Unprocessable

# C0 controls, DEL and C1 controls; free text re-allows \t (0x09) and \n (0x0a).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
ShortText = Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
FreeText = Annotated[
    str, msgspec.Meta(max_length=10_000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$")
]
Reason = Annotated[str, msgspec.Meta(max_length=2_000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$")]
Email = Annotated[
    str, msgspec.Meta(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Seats = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Capacity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
PriceCents = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000_000)]
DeadlineSeconds = Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)]


def to_utc(value: datetime, field: str) -> datetime:
    """`value` in UTC; 422 naming `field` when it has no offset or lies outside years 1 to 9999 in UTC."""
    if value.tzinfo is None:
        raise Unprocessable.field(field, "must carry a UTC offset, e.g. 2030-01-01T09:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Unprocessable.field(field, "is out of range") from None
