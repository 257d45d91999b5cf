"""Constrained field types shared by the request schemas of every area.

Names and titles refuse every control character; free text allows `\\n` and `\\t` only. Times must
carry an offset (`tz=True`), so a naive time is a 422 rather than a silent guess.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

END = r"(?![\s\S])"
r"""End of string in a pattern. Python's `$` (msgspec and Litestar search with `re`) also matches
before a final `\n`, so `"Room\n"` would pass `^[^\n]*$`; `\Z` is not valid in the ECMA-262 regex
of the OpenAPI document. "Followed by nothing at all" means the same in both."""

NO_CONTROLS = rf"^[^\x00-\x1f\x7f-\x9f]*{END}"
"""No C0 control, DEL or C1 control: names, titles, short words."""
NO_CONTROLS_BUT_TAB_NEWLINE = rf"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*{END}"
"""Free text: like NO_CONTROLS, but `\t` (0x09) and `\n` (0x0a) are allowed."""

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_CONTROLS)]
ShortText = Annotated[str, msgspec.Meta(max_length=100, pattern=NO_CONTROLS)]
FreeText = Annotated[str, msgspec.Meta(max_length=10_000, pattern=NO_CONTROLS_BUT_TAB_NEWLINE)]
Reason = Annotated[str, msgspec.Meta(max_length=2_000, pattern=NO_CONTROLS_BUT_TAB_NEWLINE)]
# A bare address, nothing else (docs/decisions.md, "Accounts"): whatever could make a mail system see
# two recipients, a display name or a route (`,;:<>()[]"\` whitespace, `%`, `!`) is refused, and so
# is non-ASCII (we do not speak SMTPUTF8). Local part: a dot-atom of letters, digits and `_+=-'`
# (`\x27`, so that msgspec's error message quotes the pattern the usual way), at most 64 characters.
# Domain: LDH labels, at least two, the last alphabetic or an IDNA `xn--` label.
_LOCAL = r"[A-Za-z0-9_+=\x27-]+(?:\.[A-Za-z0-9_+=\x27-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"^(?=[^@]{{1,64}}@){_LOCAL}@(?:{_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[A-Za-z0-9-]{{1,59}}){END}"
Email = Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)]
PATTERN_HINTS = {
    EMAIL_PATTERN: "must be a single plain address such as name@example.com: ASCII letters, digits and"
                   " . _ + = - ' before the @, a domain name after it (no display name, no second address;"
                   " internationalised addresses are not supported)",
}
"""Messages for 422s on patterned fields, which say more than "has the wrong format"."""


def is_plain_address(text: str) -> bool:
    """Whether `text` passes `Email`'s rule (length and pattern), for addresses that do not come in a
    request body: the admin bootstrap's, and stored ones at send time."""
    try:
        msgspec.convert(text, Email)
    except msgspec.ValidationError:
        return False
    return True
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Currency = Annotated[str, msgspec.Meta(pattern=rf"^[A-Z]{{3}}{END}")]
Seats = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Capacity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
PriceCents = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000_000)]
DeadlineSeconds = Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)]
Role = Literal["customer", "provider", "admin"]

