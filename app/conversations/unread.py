"""The unread-messages email: MESSAGE_EMAIL_DELAY after a message, its recipient gets one email
listing the conversation's messages they have not read — unless they read them in time.

Planned by `services.plan_unread_emails` (an rq-scheduler job in the message's outbox, and
`email_pending` on the recipient's receipt row). When the job runs, one transaction claims the plan
(`email_pending` true → false: a second run of the job, or a second worker, finds nothing to claim)
and records the email with it, so it is sent exactly once in effect.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.bookings.emails import booking_context, local_time
from app.bookings.parties import booking_parties
from app.bookings.schemas import to_booking_read
from app.conversations.services import participants, receipt_id
from app.db.tables import Booking, Message, MessageReceipt, User
from app.db.transactions import lock_row
from app.effects import Effects
from app.email.services import NewEmail, queue_emails

TEMPLATE = "message.unread"
LISTED = 20  # the newest unread messages an email quotes (it says how many there are in all)


async def email_unread(effects: Effects, booking_id: str, user_id: str) -> None:
    """Send `user_id` the messages of `booking_id` they have not read, if any, once."""
    booking_key, recipient = uuid.UUID(booking_id), uuid.UUID(user_id)
    async with effects.change() as change:
        await lock_row(Booking, booking_key)
        claimed = await MessageReceipt.update({MessageReceipt.email_pending: False}).where(
            MessageReceipt.id == receipt_id(booking_key, recipient), MessageReceipt.email_pending == True,  # noqa: E712
        ).returning(MessageReceipt.read_seq)
        if not claimed:
            return  # sent already, or never planned
        booking = await Booking.select().where(Booking.id == booking_key).first()
        if booking is None or recipient not in participants(booking):
            return  # a pooled request moved on: the previous owner no longer reads it
        unread = await Message.select(Message.seq, Message.sender_id, Message.body, Message.created_at).where(
            Message.booking_id == booking_key, Message.sender_id != recipient,
            Message.seq > claimed[0]["read_seq"]).order_by(Message.seq)
        if not unread:
            return  # read in time
        read = to_booking_read(booking)
        resource, people = await booking_parties(read)
        role = "customer" if recipient == booking["customer_id"] else "owner"
        if not people[role]["active"]:
            return  # nothing is mailed to a deactivated account
        context = booking_context(read, resource, people, role, None, effects.settings.app_url)
        context["messages"] = await _quoted(unread[-LISTED:], resource["timezone"], people)
        context["unread"] = len(unread)
        await queue_emails(change, effects.settings, [NewEmail(TEMPLATE, people[role]["email"], context, booking_key)])
        await MessageReceipt.update({MessageReceipt.emailed_seq: unread[-1]["seq"]}).where(
            MessageReceipt.id == receipt_id(booking_key, recipient))


async def _quoted(messages: list[dict[str, Any]], timezone: str,
                  people: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Each message as the template shows it: who sent it, when (the resource's time zone), what.
    Senders are the participants (`people`), or admins, read here."""
    senders = {person["id"]: person["name"] for person in people.values()}
    admins = list({m["sender_id"] for m in messages} - senders.keys())
    if admins:
        senders |= {u["id"]: u["name"] for u in await User.select(User.id, User.name).where(User.id.is_in(admins))}
    return [{"sender": senders.get(m["sender_id"], "Bookwire support"), "body": m["body"],
             "sent_at_local": local_time(m["created_at"], timezone)} for m in messages]
