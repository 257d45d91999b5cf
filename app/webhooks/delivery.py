"""Sending webhook deliveries: the dispatcher that every `bookwire worker` runs beside its RQ worker
(in a process of its own, `bookwire webhooks`, so that a receiver that stalls holds neither the
worker's jobs nor any other webhook).

- Order: a webhook's deliveries go one at a time, in the order of their events' ids. A dispatcher
  takes a webhook by a lease on its row (`lease_owner`, `lease_until`), so across any number of
  workers one dispatcher sends a webhook's deliveries at a time; different webhooks go in parallel.
- At least once: a delivery is marked done only after a 2xx answer, so a dispatcher that dies
  mid-send leaves it pending, and another sends it again once the lease has run out (30 s).
- Retries: a failed attempt (non-2xx, a timeout of 10 s, a refused address) waits
  `WEBHOOK_RETRY_INTERVALS[n]`, and the webhook's later deliveries wait behind it (order); after
  the last interval the delivery is `failed`, admins get `system.alert`, and the next one goes.
- Signed as Standard Webhooks says (the reference `standardwebhooks` library): `webhook-id` is the
  event id, `webhook-signature` is `v1,` + HMAC-SHA256 of `id.timestamp.body`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook as Signer

from app.db.tables import Webhook, WebhookDelivery
from app.outbox.change import Change
from app.realtime.events import role_channel
from app.webhooks.addresses import RefusedAddress, check_url
from app.webhooks.services import WAKE_CHANNEL

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 30
RENEW_SECONDS = 5.0
LINGER_SECONDS = 1.0
FLUSH_SECONDS = 0.25
"""How long a webhook's task waits for more deliveries before it lets the webhook go: under steady
traffic the lease is taken once, not once per event (each take and release is a write)."""
LOOK_EVERY_SECONDS = 1.0
"""How often a dispatcher looks for due deliveries without being woken (retries coming due, a
lease run out, a wake-up lost while Redis was away)."""
BATCH = 200
ADDRESS_CHECK_SECONDS = 60.0
"""How long a URL's address check holds before the name is resolved and checked again."""
USER_AGENT = "Bookwire-Webhooks/1"


class Outcome(NamedTuple):
    ok: bool
    status: int | None
    error: str | None


class _Successes:
    """Deliveries answered 2xx and not yet written as such, by answer status."""

    def __init__(self) -> None:
        self.by_status: dict[int, list[uuid.UUID]] = defaultdict(list)
        self.ids: set[uuid.UUID] = set()
        self.since = 0.0

    def add(self, delivery_id: uuid.UUID, status: int) -> None:
        if not self.ids:
            self.since = time.monotonic()
        self.by_status[status].append(delivery_id)
        self.ids.add(delivery_id)

    def due(self) -> bool:
        return bool(self.ids) and (len(self.ids) >= BATCH or time.monotonic() - self.since >= FLUSH_SECONDS)

    def clear(self) -> None:
        self.by_status.clear()
        self.ids.clear()


class Dispatcher:
    """Takes webhooks with due deliveries and sends them, each webhook in a task of its own."""

    def __init__(self, redis: Redis, change: Callable[[], AbstractAsyncContextManager[Change]],
                 retry_intervals: Sequence[int], allow_private: bool, client: httpx.AsyncClient | None = None,
                 ) -> None:
        self.redis = redis
        self.change = change
        self.retry_intervals = tuple(retry_intervals)
        self.allow_private = allow_private
        self.client = client or httpx.AsyncClient(
            follow_redirects=False, timeout=TIMEOUT_SECONDS, headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.serving: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.sent = self.failed = 0
        self._wake = asyncio.Event()
        self._checked: dict[str, float] = {}  # url -> when its address check passed (monotonic)
        self._renewed: dict[uuid.UUID, float] = {}  # webhook -> when this dispatcher last extended its lease
        self._pokes: dict[uuid.UUID, asyncio.Event] = {}  # webhook -> set when deliveries may have come

    def wake(self) -> None:
        self._wake.set()
        for poke in self._pokes.values():
            poke.set()

    async def run(self) -> None:
        """Forever: take what is due, then wait to be woken or for the next look."""
        listener = asyncio.create_task(self._listen(), name="webhooks-wake")
        try:
            while True:
                self._wake.clear()
                try:
                    await self.take_due()
                except Exception as exc:  # the database is away: look again soon
                    log.warning("webhook dispatcher: %s: %s", type(exc).__name__, exc)
                try:
                    await asyncio.wait_for(self._wake.wait(), LOOK_EVERY_SECONDS)
                except TimeoutError:
                    pass
        finally:
            listener.cancel()
            for task in list(self.serving.values()):
                task.cancel()
            await asyncio.gather(listener, *self.serving.values(), return_exceptions=True)
            await self._release(list(self.serving))

    async def _listen(self) -> None:
        """Wake on WAKE_CHANNEL (the relay publishes there after recording deliveries)."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(WAKE_CHANNEL)
                    self._wake.set()  # anything recorded while not subscribed
                    async for _ in pubsub.listen():
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis is away: the periodic look carries on meanwhile
                log.info("webhook dispatcher lost its wake-up channel: %s", exc)
                await asyncio.sleep(1.0)

    async def take_due(self) -> int:
        """Lease the webhooks that have due deliveries and no dispatcher; serve each; how many."""
        now = datetime.now(UTC)
        due = {row["webhook_id"] for row in await WebhookDelivery.select(WebhookDelivery.webhook_id).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now).distinct()}
        wanted = list(due - self.serving.keys())
        if not wanted:
            return 0
        taken = await Webhook.update({Webhook.lease_owner: self.owner,
                                      Webhook.lease_until: now + timedelta(seconds=LEASE_SECONDS)}).where(
            Webhook.id.is_in(wanted), Webhook.active == True,  # noqa: E712
            Webhook.blocked_until.is_null() | (Webhook.blocked_until <= now),
            Webhook.lease_until.is_null() | (Webhook.lease_until < now) | (Webhook.lease_owner == self.owner),
        ).returning(Webhook.id, Webhook.url, Webhook.secret)
        for hook in taken:
            self.serving[hook["id"]] = asyncio.create_task(self._serve(hook), name=f"webhook-{hook['id']}")
        return len(taken)

    async def _serve(self, hook: dict[str, Any]) -> None:
        """Send the webhook's due deliveries in order until none is left (for LINGER_SECONDS) or one
        fails. Successes are written in groups, at most FLUSH_SECONDS after the first of a group:
        one write per delivery would compete with the API's writes (SQLite has one writer); should
        the process die first, those deliveries are sent again (at least once)."""
        signer = Signer(hook["secret"])
        poke = self._pokes[hook["id"]] = asyncio.Event()
        done = _Successes()
        try:
            while await self._renew(hook["id"]):
                poke.clear()
                batch = [d for d in await WebhookDelivery.select(
                    WebhookDelivery.id, WebhookDelivery.event_id, WebhookDelivery.event_type,
                    WebhookDelivery.payload, WebhookDelivery.attempts, WebhookDelivery.next_attempt_at,
                ).where(WebhookDelivery.webhook_id == hook["id"], WebhookDelivery.status == "pending").order_by(
                    WebhookDelivery.event_ms, WebhookDelivery.event_seq, WebhookDelivery.id,
                ).limit(BATCH + len(done.ids)) if d["id"] not in done.ids][:BATCH]
                if not batch:
                    if done.due():
                        await self._record_successes(done)
                    try:
                        await asyncio.wait_for(poke.wait(), FLUSH_SECONDS if done.ids else LINGER_SECONDS)
                    except TimeoutError:
                        if not done.ids:
                            return
                    continue
                failed = await self._send_in_order(hook, signer, batch, done)
                if failed is not None or done.due():
                    await self._record_successes(done)
                if failed is not None:
                    delivery, outcome = failed
                    if outcome is not None:
                        await self._record_failure(hook, delivery, outcome)
                    return
        except Exception as exc:  # the database is away: the lease runs out, and it is taken again
            log.warning("webhook %s: %s: %s", hook["id"], type(exc).__name__, exc)
        finally:
            try:
                await self._record_successes(done)
            except Exception as exc:  # they are sent again once the lease runs out
                log.warning("webhook %s: %d successes not recorded: %s", hook["id"], len(done.ids), exc)
            self.serving.pop(hook["id"], None)
            self._renewed.pop(hook["id"], None)
            self._pokes.pop(hook["id"], None)
            await self._release([hook["id"]])
            # Deliveries recorded while this task was ending were not taken (it still held the
            # webhook): look again now. A webhook waiting for a retry is not taken (`blocked_until`).
            self._wake.set()

    async def _send_in_order(self, hook: dict[str, Any], signer: Signer, batch: list[dict[str, Any]],
                             done: _Successes) -> tuple[dict[str, Any], Outcome | None] | None:
        """Send `batch` in order, noting successes in `done`; the delivery it stopped at and why
        (an outcome, or None when it is not due yet: it waits for its retry, the later ones too)."""
        for delivery in batch:
            if delivery["next_attempt_at"] > datetime.now(UTC):
                return delivery, None
            outcome = await self._post(hook["url"], signer, delivery)
            if not outcome.ok:
                return delivery, outcome
            assert outcome.status is not None
            done.add(delivery["id"], outcome.status)
        return None

    async def _post(self, url: str, signer: Signer, delivery: dict[str, Any]) -> Outcome:
        body = delivery["payload"]
        now = datetime.now(UTC)
        headers = {"content-type": "application/json", "webhook-id": delivery["event_id"],
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signer.sign(delivery["event_id"], now, body)}
        try:
            await self._check(url)
            async with asyncio.timeout(TIMEOUT_SECONDS):
                async with self.client.stream("POST", url, content=body.encode(), headers=headers) as answer:
                    status = answer.status_code  # the body is not read: a receiver's answer is its status
        except RefusedAddress as exc:
            return Outcome(False, None, f"refused address: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, None, f"no answer within {TIMEOUT_SECONDS:.0f} s")
        except httpx.HTTPError as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Outcome(True, status, None)
        return Outcome(False, status, f"HTTP {status}")

    async def _check(self, url: str) -> None:
        """The URL's address check, again every ADDRESS_CHECK_SECONDS (a name may move)."""
        if self.allow_private:
            return
        checked = self._checked.get(url)
        if checked is None or time.monotonic() - checked > ADDRESS_CHECK_SECONDS:
            await check_url(url, self.allow_private)
            self._checked[url] = time.monotonic()

    async def _record_successes(self, done: _Successes) -> None:
        now = datetime.now(UTC)
        for status, ids in done.by_status.items():
            await WebhookDelivery.update({
                WebhookDelivery.status: "succeeded", WebhookDelivery.attempts: WebhookDelivery.attempts + 1,
                WebhookDelivery.response_status: status, WebhookDelivery.last_error: None,
                WebhookDelivery.next_attempt_at: None, WebhookDelivery.updated_at: now,
            }).where(WebhookDelivery.id.is_in(ids))
            self.sent += len(ids)
        done.clear()

    async def _record_failure(self, hook: dict[str, Any], delivery: dict[str, Any], outcome: Outcome) -> None:
        """Wait for the next interval, or, after the last, fail and tell the admins (one change)."""
        attempts = delivery["attempts"] + 1
        now = datetime.now(UTC)
        give_up = attempts > len(self.retry_intervals)
        changes: dict[Any, Any] = {
            WebhookDelivery.attempts: attempts, WebhookDelivery.response_status: outcome.status,
            WebhookDelivery.last_error: outcome.error, WebhookDelivery.updated_at: now,
            WebhookDelivery.status: "failed" if give_up else "pending",
            WebhookDelivery.next_attempt_at: None if give_up else now + timedelta(
                seconds=self.retry_intervals[attempts - 1]),
        }
        async with self.change() as change:
            await WebhookDelivery.update(changes).where(WebhookDelivery.id == delivery["id"])
            if not give_up:  # the later deliveries wait behind this one: nobody takes the webhook till then
                await Webhook.update({Webhook.blocked_until: changes[WebhookDelivery.next_attempt_at]}).where(
                    Webhook.id == hook["id"])
            if give_up:
                change.publish("system.alert", [role_channel("admin")], {
                    "kind": "webhook_failed", "webhook_id": str(hook["id"]), "delivery_id": str(delivery["id"]),
                    "to": hook["url"], "event_id": delivery["event_id"], "event_type": delivery["event_type"],
                    "attempts": attempts, "error": outcome.error})
        self.failed += give_up
        log.info("webhook %s delivery %s attempt %d failed: %s%s", hook["id"], delivery["id"], attempts,
                 outcome.error, " (giving up)" if give_up else "")

    async def _renew(self, webhook_id: uuid.UUID) -> bool:
        """Extend the lease; False when it is no longer ours (or the webhook is gone or inactive).
        Written at most every RENEW_SECONDS: a write per batch would compete with the API's writes
        (SQLite has one writer) for nothing."""
        now = datetime.now(UTC)
        renewed = self._renewed.get(webhook_id)
        if renewed is not None and time.monotonic() - renewed < RENEW_SECONDS:
            return True
        kept = await Webhook.update({Webhook.lease_until: now + timedelta(seconds=LEASE_SECONDS)}).where(
            Webhook.id == webhook_id, Webhook.lease_owner == self.owner, Webhook.active == True,  # noqa: E712
        ).returning(Webhook.id)
        if kept:
            self._renewed[webhook_id] = time.monotonic()
        return bool(kept)

    async def _release(self, webhook_ids: list[uuid.UUID]) -> None:
        if not webhook_ids:
            return
        try:
            await Webhook.update({Webhook.lease_owner: None, Webhook.lease_until: None}).where(
                Webhook.id.is_in(webhook_ids), Webhook.lease_owner == self.owner)
        except Exception as exc:  # the lease runs out by itself
            log.info("webhook dispatcher could not release %d leases: %s", len(webhook_ids), exc)
