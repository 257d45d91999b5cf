"""Seat arithmetic over half-open intervals, shared by the capacity check and availability.

Pure functions: a sweep over interval start/end points gives the seats taken at every instant.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise

Interval = tuple[datetime, datetime, int]  # [starts_at, ends_at), seats

# Booking statuses whose seats count against capacity (an expired or cancelled booking frees them).
HOLDS_SEATS: tuple[str, ...] = ("pending", "confirmed", "checked_in")


def occupancy(bookings: Iterable[Interval], start: datetime, end: datetime) -> list[Interval]:
    """Maximal sub-intervals of `[start, end)` with a constant, non-zero number of seats taken."""
    deltas: dict[datetime, int] = {}
    for b_start, b_end, seats in bookings:
        lo, hi = max(b_start, start), min(b_end, end)
        if lo < hi:
            deltas[lo] = deltas.get(lo, 0) + seats
            deltas[hi] = deltas.get(hi, 0) - seats
    segments: list[Interval] = []
    taken = 0
    points = sorted(deltas)
    for point, next_point in pairwise(points):
        taken += deltas[point]
        if taken <= 0:
            continue
        if segments and segments[-1][1] == point and segments[-1][2] == taken:
            segments[-1] = (segments[-1][0], next_point, taken)  # same count continues: extend
        else:
            segments.append((point, next_point, taken))
    return segments


def peak_seats(bookings: Iterable[Interval], start: datetime, end: datetime) -> int:
    """The most seats taken at any instant of `[start, end)`."""
    return max((seats for _, _, seats in occupancy(bookings, start, end)), default=0)
