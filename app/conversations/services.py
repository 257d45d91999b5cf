"""Conversations: the messages of a booking between its customer and its (current) owner, with admins
as support; receipts ("delivered", "read"); typing indicators; the caller's conversations.

A message is a change like any other: it is written with its `message.created` event in one
transaction (the outbox publishes it), under the booking's row lock, which also numbers the
messages of a booking 1, 2, ... (`seq`). Receipts are pointers into that numbering per user, and
only move forward. Typing indicators are ephemeral: pub/sub alone, never stored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from piccolo.columns.combination import WhereRaw

from app.bookings.services import locked_visible_booking, visible_booking
from app.conversations.schemas import (
    ConversationRead,
    MessageCreate,
    MessageRead,
    Participant,
    Receipt,
    ReceiptRequest,
    Typing,
    UnreadMessages,
    to_message_read,
)
from app.db.prepared import Prepared, insert_rows
from app.db.tables import Conversation, Message, MessageReceipt, User
from app.effects import Effects
from app.errors import Unprocessable
from app.job_queue import EMAIL_UNREAD, unread_email_job_id
from app.outbox.change import Change
from app.pagination import decode_cursor, encode_cursor, keyset_page
from app.realtime.events import user_channel
from app.realtime.presence import Presence
from app.security import AuthUser
from app.settings import Settings

CLIENT_ID_SECONDS = 24 * 3600  # a resent client_id within this returns the first message
TYPING_SECONDS = 5  # `until` of a typing indicator
TYPING_EVERY_SECONDS = 2  # at most one indicator per user and conversation in this time
TYPING_KEY = "bookwire:typing:"
_RECEIPTS = uuid.UUID("6c1e3cb4-4f5e-4b0e-9d59-0f3f8c1d2a77")  # namespace of receipt ids


def participants(booking: dict[str, Any]) -> list[uuid.UUID]:
    """The customer and the resource's current owner (admins read and post as support, aside)."""
    return [booking["customer_id"], booking["owner_id"]]


def _channels(booking: dict[str, Any], also: uuid.UUID) -> list[str]:
    """`user:` channels of both participants, and of `also` (an admin who posts or reads)."""
    return [user_channel(u) for u in dict.fromkeys([*participants(booking), also])]


def receipt_id(booking_id: uuid.UUID, user_id: uuid.UUID) -> uuid.UUID:
    """The id of a user's receipt row in a booking's conversation (one per booking and user)."""
    return uuid.uuid5(_RECEIPTS, f"{booking_id}:{user_id}")


def _new_receipt(booking_id: uuid.UUID, user_id: uuid.UUID, now: datetime, **values: Any) -> dict[str, Any]:
    return {"id": receipt_id(booking_id, user_id), "booking_id": booking_id, "user_id": user_id,
            "delivered_seq": 0, "read_seq": 0, "email_pending": False, "email_due_at": None, "emailed_seq": 0,
            "updated_at": now, **values}


async def plan_unread_emails(change: Change, settings: Settings, booking: dict[str, Any], sender: uuid.UUID, seq: int,
                             now: datetime) -> None:
    """After message `seq`: each other participant gets an unread-messages email MESSAGE_EMAIL_DELAY
    later, unless one is planned already, or the last one listed messages they have not read yet
    (no second email until they have read it). The email is decided when it is due
    (app/conversations/unread.py): none if they read the messages meanwhile."""
    due = now + timedelta(seconds=settings.message_email_delay)
    for recipient in participants(booking):
        if recipient == sender:
            continue
        row = await _receipt(booking["id"], recipient)
        if row is None:
            await insert_rows(MessageReceipt, [_new_receipt(booking["id"], recipient, now, email_pending=True,
                                                            email_due_at=due)])
        elif not row["email_pending"] and row["read_seq"] >= row["emailed_seq"]:
            await MessageReceipt.update({MessageReceipt.email_pending: True, MessageReceipt.email_due_at: due}).where(
                MessageReceipt.id == row["id"])
        else:
            continue
        change.schedule(due, EMAIL_UNREAD, str(booking["id"]), str(recipient),
                        job_id=unread_email_job_id(booking["id"], recipient, seq))


# ---- messages ------------------------------------------------------------------------------------


_sent_with_client_id = Prepared(Message, lambda booking_id, sender_id, client_id, since: Message.select().where(
    Message.booking_id == booking_id, Message.sender_id == sender_id, Message.client_id == client_id,
    Message.created_at > since).first(), uuid.UUID, uuid.UUID, str, datetime)
"""A message its sender posted with this `client_id` lately: a resend of it creates nothing."""

_CONVERSATIONS = Conversation._meta.tablename
_NEXT_SEQ = (
    f"INSERT INTO {_CONVERSATIONS} (booking_id, last_seq, last_message_at) VALUES ({{}}, 1, {{}})"  # noqa: S608
    f" ON CONFLICT (booking_id) DO UPDATE SET last_seq = {_CONVERSATIONS}.last_seq + 1,"
    " last_message_at = excluded.last_message_at RETURNING last_seq")
"""Number the booking's next message and record the activity: one statement, under the booking's
lock (SQLite 3.35+ and PostgreSQL both take ON CONFLICT ... RETURNING)."""


async def post_message(user: AuthUser, booking_id: uuid.UUID, data: MessageCreate,
                       effects: Effects) -> tuple[MessageRead, bool]:
    """The message, and whether it was created now (False: the same `client_id` was sent before)."""
    async with effects.change() as change:
        # The lock numbers the messages, and serialises resends of one client_id.
        booking = await locked_visible_booking(user, booking_id)
        now = datetime.now(UTC)
        if data.client_id is not None:
            sent = await _sent_with_client_id(booking_id, user.id, data.client_id,
                                              now - timedelta(seconds=CLIENT_ID_SECONDS))
            if sent:
                return to_message_read(sent[0]), False
        (numbered,) = await Conversation.raw(_NEXT_SEQ, booking_id, now)
        row = {"id": uuid.uuid4(), "booking_id": booking_id, "seq": numbered["last_seq"], "sender_id": user.id,
               "body": data.body, "folded": data.body.casefold(), "client_id": data.client_id, "created_at": now,
               "delivered_at": None, "read_at": None}
        await insert_rows(Message, [row])
        message = to_message_read(row)
        change.publish("message.created", _channels(booking, user.id), message)
        await plan_unread_emails(change, effects.settings, booking, user.id, row["seq"], now)
    return message, True


def _like(text: str) -> str:
    """A LIKE pattern finding `text` anywhere, its own `%`, `_` and `\\` taken literally."""
    escaped = text.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_messages(user: AuthUser, booking_id: uuid.UUID, limit: int, cursor: str | None,
                        q: str | None) -> tuple[list[MessageRead], str | None]:
    """Newest first; `q`: only messages whose body contains it, ignoring case."""
    await visible_booking(user, booking_id)
    query = Message.select().where(Message.booking_id == booking_id)
    if q:
        query = query.where(WhereRaw("folded LIKE {} ESCAPE '\\'", _like(q)))
    rows, next_cursor = await keyset_page(query, Message, limit, cursor, newest_first=True)
    return [to_message_read(r) for r in rows], next_cursor


# ---- receipts ------------------------------------------------------------------------------------


async def _seq_of(booking_id: uuid.UUID, message_id: uuid.UUID | None, field: str) -> int:
    if message_id is None:
        return 0
    row = await Message.select(Message.seq).where(Message.id == message_id, Message.booking_id == booking_id).first()
    if row is None:
        raise Unprocessable.field(field, "no message of this booking's conversation has this id")
    return int(row["seq"])


_receipt_row = Prepared(MessageReceipt, lambda row_id: MessageReceipt.select().where(
    MessageReceipt.id == row_id).first(), uuid.UUID)


async def _receipt(booking_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any] | None:
    rows = await _receipt_row(receipt_id(booking_id, user_id))
    return rows[0] if rows else None


def _pointers(row: dict[str, Any] | None) -> tuple[int, int]:
    """(delivered, read) `seq` of a receipt row; (0, 0) before any."""
    return (row["delivered_seq"], row["read_seq"]) if row else (0, 0)


async def _message_id(booking_id: uuid.UUID, seq: int) -> uuid.UUID | None:
    """The id of message `seq` of a conversation; None for 0 (nothing)."""
    if seq == 0:
        return None
    row = await Message.select(Message.id).where(Message.booking_id == booking_id, Message.seq == seq).first()
    return uuid.UUID(str(row["id"])) if row else None


async def record_receipts(user: AuthUser, booking_id: uuid.UUID, data: ReceiptRequest, effects: Effects) -> None:
    """Move the caller's delivered/read pointers forward (reading implies delivery; never back),
    stamp the messages everyone else has now received or read, and tell the participants."""
    if data.delivered_up_to is None and data.read_up_to is None:
        raise Unprocessable.field("body", "send delivered_up_to and/or read_up_to")
    async with effects.change() as change:
        booking = await locked_visible_booking(user, booking_id)  # receipts of one booking queue here
        delivered = await _seq_of(booking_id, data.delivered_up_to, "delivered_up_to")
        read = await _seq_of(booking_id, data.read_up_to, "read_up_to")
        old = await _receipt(booking_id, user.id)
        old_delivered, old_read = _pointers(old)
        new_read = max(old_read, read)
        new_delivered = max(old_delivered, delivered, new_read)
        if (new_delivered, new_read) == (old_delivered, old_read):
            return  # nothing moved: no write, no event
        now = datetime.now(UTC)
        if old is None:
            await insert_rows(MessageReceipt, [_new_receipt(booking_id, user.id, now, delivered_seq=new_delivered,
                                                            read_seq=new_read)])
        else:
            await MessageReceipt.update({MessageReceipt.delivered_seq: new_delivered, MessageReceipt.read_seq: new_read,
                                         MessageReceipt.updated_at: now}).where(
                MessageReceipt.id == receipt_id(booking_id, user.id))
        if user.id in participants(booking):
            await _stamp(booking, user.id, new_delivered, new_read, now)
        change.publish("message.receipt", _channels(booking, user.id), Receipt(
            booking_id=booking_id, user_id=user.id, delivered_up_to=await _message_id(booking_id, new_delivered),
            read_up_to=await _message_id(booking_id, new_read), at=now))


async def _stamp(booking: dict[str, Any], reader: uuid.UUID, delivered: int, read: int, now: datetime) -> None:
    """`delivered_at`/`read_at` of the messages now received/read by every participant but their
    sender: the other participant's messages as far as `reader` got; an admin's (both
    participants must have them) as far as both got."""
    booking_id = booking["id"]
    other = next(u for u in participants(booking) if u != reader)
    other_delivered, other_read = _pointers(await _receipt(booking_id, other))
    for column, mine, theirs in ((Message.delivered_at, delivered, other_delivered),
                                 (Message.read_at, read, other_read)):
        await Message.update({column: now}).where(
            Message.booking_id == booking_id, column.is_null(), Message.sender_id == other, Message.seq <= mine)
        both = min(mine, theirs)
        if both:
            await Message.update({column: now}).where(
                Message.booking_id == booking_id, column.is_null(), Message.seq <= both,
                Message.sender_id.not_in(participants(booking)))


# ---- typing --------------------------------------------------------------------------------------


async def typing(user: AuthUser, booking_id: uuid.UUID, effects: Effects) -> None:
    """Tell the other participants that the caller is typing (ephemeral), at most every 2 s."""
    key = f"{TYPING_KEY}{booking_id}:{user.id}"
    if await effects.bus.redis.exists(key):
        # Told less than 2 s ago, after the access check below: a typist's repeated calls (a client
        # sends one every second or so while keys go down) cost one Redis read, no database read.
        return
    booking = await visible_booking(user, booking_id)
    first = await effects.bus.redis.set(key, b"1", nx=True, px=TYPING_EVERY_SECONDS * 1000)
    if not first:
        return
    until = datetime.now(UTC) + timedelta(seconds=TYPING_SECONDS)
    others = [user_channel(u) for u in participants(booking) if u != user.id]
    await effects.bus.publish_ephemeral("conversation.typing", others, Typing(booking_id, user.id, until))


# ---- the caller's conversations ------------------------------------------------------------------


def _where_mine(user: AuthUser) -> tuple[str, list[Any]]:
    """SQL condition on bookings `b`: the caller's conversations (a participant's; an admin's: all)."""
    if user.is_admin:
        return "1 = 1", []
    return "(b.customer_id = {} OR b.owner_id = {})", [user.id, user.id]


async def list_conversations(user: AuthUser, presence: Presence, limit: int,
                             cursor: str | None) -> tuple[list[ConversationRead], str | None]:
    """The caller's conversations that have messages, most recent activity first."""
    mine, args = _where_mine(user)
    after = ""
    if cursor:
        at, booking_id = decode_cursor(cursor)
        after = " AND (c.last_message_at < {} OR (c.last_message_at = {} AND c.booking_id < {}))"
        args += [at, at, booking_id]
    # Fixed fragments with `{}` placeholders, and an int: no value is formatted into the SQL.
    sql = ("SELECT c.booking_id, c.last_seq, c.last_message_at, b.resource_id, b.customer_id, b.owner_id"  # noqa: S608
           f" FROM conversations c JOIN bookings b ON b.id = c.booking_id WHERE {mine}{after}"
           f" ORDER BY c.last_message_at DESC, c.booking_id DESC LIMIT {limit + 1}")
    rows = await Conversation.raw(sql, *args)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["last_message_at"], rows[-1]["booking_id"])
    if not rows:
        return [], None
    ids = [r["booking_id"] for r in rows]
    marks = ", ".join("{}" for _ in ids)
    sql = ("SELECT m.* FROM messages m JOIN conversations c"  # noqa: S608 (placeholders only)
           f" ON c.booking_id = m.booking_id AND m.seq = c.last_seq WHERE m.booking_id IN ({marks})")
    last = {m["booking_id"]: m for m in await Message.raw(sql, *ids)}
    unread = await _unread_by_booking(user, ids)
    people = {u["id"]: u for u in await User.select(User.id, User.name, User.role).where(
        User.id.is_in(list({p for r in rows for p in (r["customer_id"], r["owner_id"])})))}
    seen = await presence.last_seen([str(p) for p in people])
    now = datetime.now(UTC).timestamp()

    def participant(user_id: uuid.UUID) -> Participant:
        at = seen.get(str(user_id))
        return Participant(user_id=user_id, name=people[user_id]["name"], role=people[user_id]["role"],
                           online=at is not None and now - at < presence.ttl,
                           last_seen_at=datetime.fromtimestamp(at, UTC) if at is not None else None)

    return [ConversationRead(booking_id=r["booking_id"], resource_id=r["resource_id"],
                             participants=[participant(r["customer_id"]), participant(r["owner_id"])],
                             last_message=to_message_read(last[r["booking_id"]]),
                             unread=unread.get(r["booking_id"], 0)) for r in rows], next_cursor


_UNREAD = (
    "SELECT m.booking_id, COUNT(*) AS unread FROM messages m JOIN bookings b ON b.id = m.booking_id"
    " {join} message_receipts r ON r.booking_id = m.booking_id AND r.user_id = {{}}"
    " WHERE m.sender_id <> {{}} AND m.seq > COALESCE(r.read_seq, 0) AND {mine}{only} GROUP BY m.booking_id"
)


async def _unread_by_booking(user: AuthUser, booking_ids: list[uuid.UUID] | None) -> dict[uuid.UUID, int]:
    """Messages from others the caller has not read, per conversation. An admin counts only in the
    conversations they have read before (they follow those); a participant in all of theirs."""
    mine, args = _where_mine(user)
    only = ""
    if booking_ids is not None:
        only = " AND m.booking_id IN ({})".format(", ".join("{}" for _ in booking_ids))
        args = [*args, *booking_ids]
    sql = _UNREAD.format(join="JOIN" if user.is_admin else "LEFT JOIN", mine=mine, only=only)
    rows = await Message.raw(sql, user.id, user.id, *args)
    return {r["booking_id"]: int(r["unread"]) for r in rows}


async def unread_count(user: AuthUser) -> UnreadMessages:
    """Messages from others the caller has not read, over all their conversations."""
    return UnreadMessages(unread=sum((await _unread_by_booking(user, None)).values()))
