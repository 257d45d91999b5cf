"""Seat arithmetic over half-open intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.resources.capacity import occupancy, peak_seats

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_back_to_back_intervals_do_not_add_up() -> None:
    assert peak_seats([(h(0), h(1), 1), (h(1), h(2), 1)], h(0), h(2)) == 1


def test_peak_is_the_busiest_instant_not_the_sum() -> None:
    bookings = [(h(0), h(1), 2), (h(1), h(2), 2), (h(0), h(2), 1)]
    assert peak_seats(bookings, h(0), h(2)) == 3


def test_occupancy_merges_equal_neighbours_and_clips_to_window() -> None:
    bookings = [(h(0), h(2), 1), (h(1), h(3), 2), (h(3), h(4), 2), (h(5), h(9), 1)]
    assert occupancy(bookings, h(0), h(6)) == [
        (h(0), h(1), 1), (h(1), h(2), 3), (h(2), h(4), 2), (h(5), h(6), 1),
    ]


def test_bookings_outside_the_window_take_nothing() -> None:
    assert occupancy([(h(0), h(1), 5)], h(1), h(2)) == []
    assert peak_seats([], h(0), h(1)) == 0
