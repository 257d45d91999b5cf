"""Sending one queued delivery: claim it, render, send, record; retry with backoff, or fail for good.

`send_delivery` is the body of the `send_email` job (workers/jobs.py). It is idempotent: running it
twice — a retry, two workers, a sweep re-enqueueing it — sends at most what one run would.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from app.db.tables import EmailDelivery, EmailTemplate, User
from app.effects import Effects
from app.email.rendering import TemplateProblem, render
from app.email.schemas import EmailFailedAlert
from app.email.sending import MaybeDelivered, Undeliverable, build_message, check_recipient, deliver
from app.email.services import template_in_effect
from app.job_queue import EMAIL_QUEUE, SEND_EMAIL, email_job_id
from app.metrics import count_worker_event
from app.realtime.events import role_channel

log = logging.getLogger(__name__)


class RecipientDeactivated(Undeliverable):
    """The delivery's recipient is a deactivated account: it ends `failed`, quietly (no alert)."""


class MaybeSentTwice(Undeliverable):
    """Two attempts may each have delivered it: a third is not made (at most one resend)."""


MAX_UNCERTAIN_ATTEMPTS = 2


async def send_delivery(effects: Effects, delivery_id: str) -> None:
    """Send one delivery, exactly once as far as Bookwire can tell (see `_claim`).

    Duplicates are bounded: an attempt that may have delivered the message unbeknown to Bookwire
    (MaybeDelivered, or a claim that expired: the worker died mid-send or before recording the
    250) is counted, and after two such the delivery fails for good instead of transmitting a
    third time. So a receiver gets at most one resend, always with the same Message-ID; a failure
    the server reported (or no connection at all) is certain, not counted, and retried as usual."""
    settings = effects.settings
    row = await _claim(uuid.UUID(delivery_id), settings.email_send_timeout)
    if row is None:
        return  # sent, failed for good, or being sent by someone else right now
    try:
        if row["uncertain_attempts"] >= MAX_UNCERTAIN_ATTEMPTS:
            raise MaybeSentTwice(f"{row['uncertain_attempts']} attempts may have delivered it; not sent again")
        check_recipient(row["to_address"])  # a malformed address stored before addresses were checked
        deactivated, template = await _recipient_and_template(row["to_address"], row["template_key"])
        if deactivated:
            raise RecipientDeactivated(f"{row['to_address']} belongs to a deactivated account; not sent")
        # Blocks this worker's loop for at most the sandbox's time limit; nothing else runs on it meanwhile.
        rendered = render(template, msgspec.json.decode(row["context"]))
        deliver(settings, build_message(settings, row["to_address"], rendered, row["message_id"]), delivery_id,
                row["to_address"])
    except Exception as exc:  # SMTP refused or down, template broken since it was queued, ...
        await _failed_attempt(effects, row, exc)
        return
    now = datetime.now(UTC)
    recorded = await EmailDelivery.update({"status": "sent", "sent_at": now, "updated_at": now, "last_error": None,
                                           "claimed_until": None}).where(_still_ours(row)).returning(EmailDelivery.id)
    if not recorded:  # cannot happen while an attempt stays within its claim (deliver() bounds it)
        log.error("email %s was sent after its claim expired; another attempt may send it too", row["id"])
    count_worker_event(effects.jobs.connection, "emails_sent")


def _still_ours(row: dict[str, Any]) -> Any:
    """The condition of a delivery still claimed by the attempt that read `row`: its outcome is
    written only then, never over a later attempt's."""
    return ((EmailDelivery.id == row["id"]) & (EmailDelivery.status == "sending")
            & (EmailDelivery.attempts == row["attempts"]))


async def _claim(delivery_id: uuid.UUID, send_timeout: int) -> dict[str, Any] | None:
    """Mark the delivery `sending` for one attempt, unless it is sent, failed, claimed by a live
    attempt, or waiting for a retry that is not due yet (a job that asks early — the change's own
    job carried out again by a relay, say — does nothing; the retry's scheduled job comes later).
    A claim expires after the send timeout, so a worker killed mid-send is retried — once the SMTP
    conversation it was in can no longer complete. One statement when the delivery is queued, as it
    nearly always is."""
    now = datetime.now(UTC)
    claim = EmailDelivery.update({
        EmailDelivery.status: "sending", EmailDelivery.attempts: EmailDelivery.attempts + 1,
        EmailDelivery.claimed_until: now + timedelta(seconds=send_timeout + 5), EmailDelivery.updated_at: now,
        EmailDelivery.next_attempt_at: None,
    }).where(EmailDelivery.id == delivery_id, EmailDelivery.status == "queued",
             EmailDelivery.next_attempt_at.is_null() | (EmailDelivery.next_attempt_at <= now),
             ).returning(*EmailDelivery.all_columns())
    rows = await claim
    if rows:
        return rows[0]
    # An expired claim: that attempt's worker died mid-send, or after the 250 and before recording it.
    expired = await EmailDelivery.update({
        EmailDelivery.status: "queued", EmailDelivery.uncertain_attempts: EmailDelivery.uncertain_attempts + 1,
        EmailDelivery.next_attempt_at: None,
    }).where(EmailDelivery.id == delivery_id, EmailDelivery.status == "sending",
             EmailDelivery.claimed_until < now).returning(EmailDelivery.id)
    rows = await claim if expired else []
    return rows[0] if rows else None


async def _recipient_and_template(to_address: str, key: str) -> tuple[bool, dict[str, str]]:
    """Whether `to_address` is a deactivated account's, and the template `key` in effect: one
    read (the worker's path waits for each statement)."""
    users, templates = User._meta.tablename, EmailTemplate._meta.tablename
    rows = await EmailTemplate.raw(
        f"SELECT t.subject, t.text, t.html, EXISTS (SELECT 1 FROM {users} u WHERE u.email = {{}} AND NOT u.active)"  # noqa: S608
        f" AS deactivated FROM (SELECT 1 AS one) AS one LEFT JOIN {templates} t ON t.key = {{}}",
        to_address.lower(), key)
    row = rows[0]
    return bool(row["deactivated"]), template_in_effect(key, row if row["subject"] is not None else None)


async def _failed_attempt(effects: Effects, row: dict[str, Any], exc: Exception) -> None:
    intervals = effects.settings.email_retry_intervals
    attempt = row["attempts"]
    error = f"{type(exc).__name__}: {exc}"[:2000]
    now = datetime.now(UTC)
    # No retry can fix a broken template or a recipient that cannot or must not be mailed.
    maybe_delivered = isinstance(exc, MaybeDelivered)
    uncertain = row["uncertain_attempts"] + maybe_delivered
    give_up = (attempt > len(intervals) or uncertain >= MAX_UNCERTAIN_ATTEMPTS
               or isinstance(exc, TemplateProblem | Undeliverable))
    if uncertain >= MAX_UNCERTAIN_ATTEMPTS and not isinstance(exc, MaybeSentTwice):
        error = f"{error}; not sent again: {uncertain} attempts may each have delivered it"[:2000]
    quiet = isinstance(exc, RecipientDeactivated)  # by design: nothing for an admin to do
    retry_at = None if give_up else now + timedelta(seconds=intervals[attempt - 1])
    async with effects.change() as change:  # the outcome and what it sets in motion, together
        recorded = await EmailDelivery.update({
            EmailDelivery.status: "failed" if give_up else "queued", EmailDelivery.last_error: error,
            EmailDelivery.next_attempt_at: retry_at,
            EmailDelivery.updated_at: now, EmailDelivery.claimed_until: None,
            EmailDelivery.uncertain_attempts: EmailDelivery.uncertain_attempts + int(maybe_delivered),
        }).where(_still_ours(row)).returning(EmailDelivery.id)
        if not recorded:  # a later attempt owns it now: its outcome counts, not this one's
            log.error("email %s attempt %d ended after its claim expired: %s", row["id"], attempt, error)
            return
        if give_up and not quiet:
            change.publish("system.alert", [role_channel("admin")], EmailFailedAlert(
                delivery_id=row["id"], to=row["to_address"], template_key=row["template_key"], attempts=attempt,
                error=error))
        elif retry_at is not None:
            change.schedule(retry_at, SEND_EMAIL, str(row["id"]),
                            job_id=email_job_id(row["id"], attempt + 1), queue=EMAIL_QUEUE)
    if quiet:
        count_worker_event(effects.jobs.connection, "emails_failed")
        log.info("email %s not sent: %s", row["id"], error)
    elif give_up:
        count_worker_event(effects.jobs.connection, "emails_failed")
        log.error("email %s to %s failed for good after %d attempts: %s", row["id"], row["to_address"], attempt,
                  error)
    else:
        log.warning("email %s attempt %d failed (%s); retrying in %d s", row["id"], attempt, error,
                    intervals[attempt - 1])
