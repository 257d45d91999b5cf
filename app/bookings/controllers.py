"""HTTP endpoints for bookings: create, list, read, reschedule, status actions, history."""

import uuid
from datetime import datetime
from typing import Annotated, Literal

from litestar import Controller, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from app.bookings import services
from app.bookings.schemas import (
    ActionRequest,
    BookingCreate,
    BookingRead,
    BookingUpdate,
    HistoryEntry,
    ReminderRead,
)
from app.effects import Effects, provide_effects
from app.idempotency import IdempotencyKey, run_once
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import AuthUser, current_user

StatusFilter = Literal["pending", "confirmed", "rejected", "cancelled", "expired", "checked_in", "completed"]


class BookingController(Controller):
    path = "/v1/bookings"
    tags = ["bookings"]
    dependencies = {"user": Provide(current_user), "effects": Provide(provide_effects)}

    @post("/", operation_id="createBooking", status_code=201)
    async def create_booking(
        self, user: AuthUser, effects: Effects, data: BookingCreate, idempotency_key: IdempotencyKey = None,
    ) -> BookingRead:
        """Book a resource (`resource_id`) or a pool (`pool_id`): pending, or confirmed when the resource needs no
        confirmation. Publishes `booking.created`."""
        return await run_once(user.id, idempotency_key, "createBooking", data,
                              lambda remember: services.create_booking(user, data, effects, remember), BookingRead)

    @get("/", operation_id="listBookings")
    async def list_bookings(
        self, user: AuthUser, status: StatusFilter | None = None, resource_id: uuid.UUID | None = None,
        from_: Annotated[datetime | None, Parameter(query="from")] = None, to: datetime | None = None,
        limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[BookingRead]:
        """Bookings the caller may see (a customer's own, a provider's resources', an admin's all), oldest first;
        `from`/`to` select those overlapping `[from, to)`."""
        items, next_cursor = await services.list_bookings(user, status, resource_id, from_, to, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{booking_id:uuid}", operation_id="getBooking")
    async def get_booking(self, user: AuthUser, booking_id: uuid.UUID) -> BookingRead:
        """One booking (its customer, its owner, admins)."""
        return await services.get_booking(user, booking_id)

    @patch("/{booking_id:uuid}", operation_id="updateBooking")
    async def update_booking(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: BookingUpdate
    ) -> BookingRead:
        """Reschedule (`starts_at`/`ends_at`, `booking.rescheduled`) or change `notes` only (`booking.updated`)."""
        return await services.update_booking(user, booking_id, data, effects)

    @get("/{booking_id:uuid}/reminders", operation_id="getBookingReminders")
    async def booking_reminders(
        self, user: AuthUser, booking_id: uuid.UUID, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[ReminderRead]:
        """A booking's reminders, soonest first."""
        items, next_cursor = await services.reminders(user, booking_id, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{booking_id:uuid}/history", operation_id="getBookingHistory")
    async def booking_history(
        self, user: AuthUser, booking_id: uuid.UUID, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[HistoryEntry]:
        """A booking's history, oldest first, starting with `create`."""
        items, next_cursor = await services.history(user, booking_id, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @post("/{booking_id:uuid}/confirm", operation_id="confirmBooking", status_code=200)
    async def confirm(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ActionRequest | None = None
    ) -> BookingRead:
        """Confirm a pending booking (the owner, admins). Publishes `booking.confirmed`."""
        return await services.transition(user, booking_id, "confirm", _reason(data), effects)

    @post("/{booking_id:uuid}/reject", operation_id="rejectBooking", status_code=200)
    async def reject(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ActionRequest | None = None
    ) -> BookingRead:
        """Reject a pending booking (the owner, admins). Publishes `booking.rejected` (a pooled request moves on
        instead: `booking.reassigned`)."""
        return await services.transition(user, booking_id, "reject", _reason(data), effects)

    @post("/{booking_id:uuid}/cancel", operation_id="cancelBooking", status_code=200)
    async def cancel(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ActionRequest | None = None
    ) -> BookingRead:
        """Cancel a pending or confirmed booking (the customer, the owner, admins). Publishes `booking.cancelled`."""
        return await services.transition(user, booking_id, "cancel", _reason(data), effects)

    @post("/{booking_id:uuid}/check-in", operation_id="checkInBooking", status_code=200)
    async def check_in(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ActionRequest | None = None
    ) -> BookingRead:
        """Check in a confirmed booking (the owner, admins). Publishes `booking.checked_in`."""
        return await services.transition(user, booking_id, "check-in", _reason(data), effects)

    @post("/{booking_id:uuid}/complete", operation_id="completeBooking", status_code=200)
    async def complete(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ActionRequest | None = None
    ) -> BookingRead:
        """Complete a checked-in booking (the owner, admins). Publishes `booking.completed`."""
        return await services.transition(user, booking_id, "complete", _reason(data), effects)


def _reason(data: ActionRequest | None) -> str | None:
    return data.reason if data else None
