"""The database tables. Times are `Timestamptz` (stored in UTC); ids are UUIDs."""

from __future__ import annotations

from typing import Any

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class User(Table, tablename="users"):
    """A customer, provider or admin. `email` is stored lower-cased."""

    id = UUID(primary_key=True)
    email = Varchar(length=254, unique=True)
    name = Varchar(length=200)
    role = Varchar(length=16, index=True)
    password_hash = Text()
    active = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    tokens_valid_after = Timestamptz(null=True, default=None)
    """Tokens issued before this are refused (set by deactivation, password change, promotion)."""


class Pool(Table, tablename="pools"):
    """Interchangeable resources of several providers: a request to the pool lands on one of them
    and moves on to the next when unanswered (app/pools/, app/bookings/placement.py)."""

    id = UUID(primary_key=True)
    name = Varchar(length=200)
    description = Text()
    active = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())


class Resource(Table, tablename="resources"):
    """Something bookable: a room, a seat, a session. Deleting it only sets `deleted_at`."""

    id = UUID(primary_key=True)
    owner_id = ForeignKey(references=User, index=True)
    name = Varchar(length=200)
    kind = Varchar(length=100)
    description = Text()
    capacity = Integer(default=1)
    price_cents = BigInt(default=0)
    currency = Varchar(length=3)
    timezone = Varchar(length=64)
    requires_confirmation = Boolean(default=True)
    response_deadline_seconds = Integer(null=True, default=None)
    active = Boolean(default=True)
    deleted_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())
    pool_id = UUID(null=True, default=None, index=True)
    last_offered_at = Timestamptz(null=True, default=None)
    """When a pooled request was last offered to it: the pool offers the next one to the resource
    with room that waited longest."""

    @classmethod
    def offered(cls) -> Any:
        """The condition of a resource that anyone may see, follow and book: active, not deleted,
        and its owner's account active (a deactivated provider's resources are offered to nobody)."""
        owner_active: Any = cls.owner_id.active  # a column of the joined owner
        return (cls.active == True) & cls.deleted_at.is_null() & (owner_active == True)  # noqa: E712


class Booking(Table, tablename="bookings"):
    """A customer's claim on `seats` of a resource for `[starts_at, ends_at)`."""

    id = UUID(primary_key=True)
    resource_id = ForeignKey(references=Resource, index=True)
    customer_id = ForeignKey(references=User, index=True)
    owner_id = ForeignKey(references=User, index=True)
    starts_at = Timestamptz(index=True)
    ends_at = Timestamptz(index=True)
    seats = Integer(default=1)
    notes = Text()
    status = Varchar(length=16, index=True)
    price_cents = BigInt(default=0)
    currency = Varchar(length=3)
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())
    pool_id = UUID(null=True, default=None, index=True)
    offered_at = Timestamptz(null=True, default=None)
    """When its current owner was asked (null: at `created_at`): the response deadline runs from it."""


class BookingOffer(Table, tablename="booking_offers"):
    """A resource a pooled booking was offered to: it is not offered the same booking twice."""

    id = UUID(primary_key=True)
    booking_id = ForeignKey(references=Booking, index=True)
    resource_id = UUID()
    offered_at = Timestamptz()


class BookingHistory(Table, tablename="booking_history"):
    """One row per change of a booking, oldest first; `actor_id` is None for the system."""

    id = UUID(primary_key=True)
    booking_id = ForeignKey(references=Booking, index=True)
    action = Varchar(length=32)
    actor_id = UUID(null=True, default=None)
    from_status = Varchar(length=16, null=True, default=None)
    to_status = Varchar(length=16)
    reason = Text(null=True, default=None)
    at = Timestamptz(default=TimestamptzNow(), index=True)


class Notification(Table, tablename="notifications"):
    """An in-app inbox item of one user; `read_at` is None while unread."""

    id = UUID(primary_key=True)
    user_id = ForeignKey(references=User, index=True)
    type = Varchar(length=64)
    title = Varchar(length=200)
    body = Text()
    data = JSONB()
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    read_at = Timestamptz(null=True, default=None, index=True)


class EmailTemplate(Table, tablename="email_templates"):
    """An admin's override of a shipped email template (absent: the default is used)."""

    key = Varchar(length=64, primary_key=True)
    subject = Text()
    text = Text()
    html = Text()
    updated_at = Timestamptz(default=TimestamptzNow())


class EmailDelivery(Table, tablename="email_deliveries"):
    """One email to send: what, to whom, and how sending went. `context` is rendered at send time."""

    id = UUID(primary_key=True)
    template_key = Varchar(length=64)
    booking_id = UUID(null=True, default=None, index=True)
    to_address = Varchar(length=254)
    context = JSONB()
    status = Varchar(length=16, index=True)  # queued, sending, sent, failed
    attempts = Integer(default=0)
    last_error = Text(null=True, default=None)
    message_id = Varchar(length=200)
    claimed_until = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    uncertain_attempts = Integer(default=0)
    """Attempts that may have delivered it without Bookwire knowing (the SMTP server took the message
    and then the reply was lost, or the worker died mid-send): at most one resend follows them."""
    next_attempt_at = Timestamptz(null=True, default=None)
    """When a failed attempt's retry is due: no attempt is made before it, however many jobs ask
    (a relay carrying out the change's job row again, a sweep, a second worker)."""


class Reminder(Table, tablename="reminders"):
    """A reminder before a confirmed booking starts, for its owner or its customer."""

    id = UUID(primary_key=True)
    booking_id = ForeignKey(references=Booking, index=True)
    recipient_id = UUID()
    recipient_role = Varchar(length=16)
    offset_seconds = Integer()
    due_at = Timestamptz(index=True)
    status = Varchar(length=16, index=True)  # scheduled, sent, cancelled, failed
    fired_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class OutboxEntry(Table, tablename="outbox"):
    """Something a committed change still has to tell the world: an event to publish, a control
    message for the API processes, a job to enqueue or schedule. Written in the change's own
    transaction, deleted by the relay once done (app/outbox/)."""

    id = BigSerial(primary_key=True)
    """Gives the order: rows of one booking or resource are written under its row lock, so their ids
    follow its `version`."""
    key = UUID(index=True)
    """The bus's dedup key (`outbox:<key>`): publishing the row twice delivers it once; and how a
    relay deletes a row. Never `id` for these: SQLite hands out an id again once the table is empty."""
    kind = Varchar(length=16)  # event, control, job
    payload = Text()
    created_at = Timestamptz(default=TimestamptzNow())


class IdempotencyRecord(Table, tablename="idempotency_keys"):
    """A creating POST's `Idempotency-Key`, stored in the transaction of what it created."""

    id = Varchar(length=64, primary_key=True)  # sha256 of (caller, key): one row per caller and key
    fingerprint = Varchar(length=64)  # sha256 of (operation, body)
    response = Text()
    created_at = Timestamptz(default=TimestamptzNow(), index=True)


class Conversation(Table, tablename="conversations"):
    """A booking's conversation, once it has a message: where it stands (one row per booking)."""

    booking_id = UUID(primary_key=True)  # the booking's id (bookings are never deleted)
    last_seq = Integer(default=0)
    """The `seq` of its newest message: messages are numbered 1, 2, ... in their booking, under its lock."""
    last_message_at = Timestamptz(index=True)
    """Most recent activity: conversations are listed newest first by it."""


class Message(Table, tablename="messages"):
    """One message of a booking's conversation."""

    id = UUID(primary_key=True)
    booking_id = ForeignKey(references=Booking, index=True)
    seq = Integer()
    """Its number in the booking's conversation: receipts ("read up to") compare these."""
    sender_id = UUID(index=True)
    body = Text()
    folded = Text()
    """`body.casefold()`: search ignores case the same way on SQLite and PostgreSQL."""
    client_id = Varchar(length=64, null=True, default=None)
    created_at = Timestamptz(index=True)
    delivered_at = Timestamptz(null=True, default=None)
    """When every other participant (admins aside) had received it."""
    read_at = Timestamptz(null=True, default=None)


class MessageReceipt(Table, tablename="message_receipts"):
    """How far one user has received and read one booking's conversation (`seq` of the last
    message), never moving backwards. Its id is derived from the booking and the user."""

    id = UUID(primary_key=True)
    booking_id = ForeignKey(references=Booking, index=True)
    user_id = UUID(index=True)
    delivered_seq = Integer(default=0)
    read_seq = Integer(default=0)
    email_pending = Boolean(default=False)
    """An unread-messages email is planned (MESSAGE_EMAIL_DELAY after a message): no second one is."""
    email_due_at = Timestamptz(null=True, default=None)
    """When the planned email is due: the sweep runs its job if the job went missing."""
    emailed_seq = Integer(default=0)
    """The newest message the last unread-messages email listed: no other email until it is read."""
    updated_at = Timestamptz()




class Webhook(Table, tablename="webhooks"):
    """An integrator's endpoint that receives the events it asks for (app/webhooks/)."""

    id = UUID(primary_key=True)
    url = Text()
    event_types = JSONB()
    """Exact types (`booking.confirmed`), prefixes (`booking.*`) or `*`."""
    secret = Varchar(length=64)
    """The Standard Webhooks signing secret (`whsec_` + base64), shown once, at creation."""
    active = Boolean(default=True, index=True)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())
    lease_owner = Varchar(length=64, null=True, default=None)
    lease_until = Timestamptz(null=True, default=None)
    """The dispatcher sending this webhook's deliveries until then: one at a time, so they go in order."""
    blocked_until = Timestamptz(null=True, default=None)
    """Its first pending delivery waits for a retry until then, and the others behind it."""


class WebhookDelivery(Table, tablename="webhook_deliveries"):
    """One event to POST to one webhook, and how that went. Created by the outbox relay once the
    event is published, in order of the event's id (`event_ms`, `event_seq`)."""

    id = UUID(primary_key=True)
    webhook_id = UUID(index=True)
    event_id = Varchar(length=32)
    event_type = Varchar(length=100)
    event_ms = BigInt()
    event_seq = BigInt()
    payload = Text()
    """The envelope, as POSTed (signed byte for byte)."""
    status = Varchar(length=16, index=True)  # pending, succeeded, failed
    attempts = Integer(default=0)
    response_status = Integer(null=True, default=None)
    last_error = Text(null=True, default=None)
    next_attempt_at = Timestamptz(null=True, default=None, index=True)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    updated_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: list[type[Table]] = [
    User, Pool, Resource, Booking, BookingOffer, BookingHistory, Notification, EmailTemplate, EmailDelivery,
    Reminder, OutboxEntry, IdempotencyRecord, Conversation, Message, MessageReceipt,
    Webhook, WebhookDelivery,
]
