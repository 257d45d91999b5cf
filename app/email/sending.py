"""Sending one message: building it, and handing it to SMTP or to the outbox folder.

A message goes to exactly one recipient: the SMTP envelope is given explicitly (never read from
the headers), and an address that is not a plain `Email` (one stored before addresses were checked
strictly) is `Undeliverable` at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from app.email.rendering import Rendered
from app.settings import Settings
from app.wire import is_plain_address

log = logging.getLogger(__name__)



class Undeliverable(ValueError):
    """A recipient no message can go to (not a plain address, or a deactivated account): no retry helps."""


class MaybeDelivered(RuntimeError):
    """The message was handed to the SMTP server and then no reply came (a timeout, a dropped
    connection): it may have been delivered."""


class _SMTP(smtplib.SMTP):
    """Knows whether the message itself was being transmitted when something failed, and can be
    cut off from another thread (`abort`) when the whole exchange runs past its deadline."""

    transmitting = False
    aborted = False

    def data(self, msg: Any) -> Any:
        self.transmitting = True
        return super().data(msg)

    def send(self, s: Any) -> None:
        if self.aborted:
            raise smtplib.SMTPServerDisconnected("the SMTP exchange ran past EMAIL_SEND_TIMEOUT")
        super().send(s)

    def abort(self) -> None:
        """Called by the deadline's timer: wakes a blocked read or write with an error."""
        self.aborted = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@functools.cache
def _local_hostname() -> str:
    """The name this host gives in EHLO, looked up once: smtplib asks `socket.getfqdn()` on every
    connection, a reverse DNS lookup that can take longer than sending the message."""
    return socket.getfqdn()


def check_recipient(to_address: str) -> None:
    """Undeliverable unless `to_address` is one plain address (the rule of `app.wire.Email`)."""
    if not is_plain_address(to_address):
        raise Undeliverable(f"{to_address[:300]!r} is not a single plain email address; not sent")


def build_message(settings: Settings, to_address: str, rendered: Rendered, message_id: str) -> EmailMessage:
    """A multipart/alternative message (text and HTML) with a stable Message-ID."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = settings.smtp_from
    message["To"] = to_address
    message["Message-ID"] = message_id
    message["Date"] = format_datetime(datetime.now(UTC))
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def new_message_id(delivery_id: str, settings: Settings) -> str:
    """`<delivery-id@host>`: the same on every retry, so receivers can tell a resend."""
    domain = settings.smtp_from.rsplit("@", 1)[-1].strip("> ") or "bookwire.local"
    return f"<{delivery_id}@{domain}>"


def deliver(settings: Settings, message: EmailMessage, delivery_id: str, to_address: str) -> None:
    """Send by SMTP when SMTP_HOST is set, else write `$DATA_DIR/outbox/<delivery id>.eml`.

    The envelope is `to_address` alone: `send_message` would otherwise take its recipients from the
    To/Cc/Bcc headers, which must never be able to add one."""
    check_recipient(to_address)
    if settings.smtp_host is None:
        outbox = settings.data_dir / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        path = outbox / f"{delivery_id}.eml"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(bytes(message))
        temporary.replace(path)  # atomic: a reader never sees half a message, a retry overwrites
        log.info("simulation mode: email %s to %s written to %s", message["Message-ID"], message["To"], path)
        return
    _connections.send(settings, message, to_address)
    log.info("email %s sent to %s through %s", message["Message-ID"], message["To"], settings.smtp_host)


class _StaleConnection(Exception):
    """A kept connection failed before the message was transmitted (the server closed it while it
    sat idle, or ended it with a 421): nothing was sent, so a new connection may send at once."""


class _ConnectionCache:
    """One SMTP connection per process, kept open between messages (as Postfix's connection cache
    does): connecting, greeting, EHLO (and STARTTLS and AUTH) and QUIT cost more round trips than
    the message itself, and halved a worker's throughput. A connection is used for at most
    `MAX_MESSAGES` messages and `MAX_AGE_SECONDS`, and not after `MAX_IDLE_SECONDS` without use
    (servers drop idle clients; Postfix's own cache keeps them 2 s). Any failure closes it.

    A worker runs one job at a time; the lock only guards against a caller on another thread."""

    MAX_MESSAGES = 100
    MAX_IDLE_SECONDS = 10.0
    MAX_AGE_SECONDS = 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._smtp: _SMTP | None = None
        self._key: tuple[Any, ...] = ()
        self._opened = self._used = 0.0
        self._messages = 0

    def send(self, settings: Settings, message: EmailMessage, to_address: str) -> None:
        """Send over the kept connection, or a new one; reconnect once if the kept one went stale.

        smtplib's timeout bounds each read and write, not the exchange: a server answering every
        step just in time could keep one attempt going past its claim, and a second worker would
        send the message again meanwhile. The whole exchange gets EMAIL_SEND_TIMEOUT (the claim
        lasts 5 s more): a timer aborts whichever connection is in use when it runs out."""
        with self._lock:
            deadline = time.monotonic() + settings.email_send_timeout
            smtp = self._kept(settings)
            try:
                if smtp is not None:
                    try:
                        self._send_within(smtp, deadline, settings, message, to_address, reused=True)
                    except _StaleConnection:
                        self._forget()
                        smtp = None
                if smtp is None:
                    smtp = self._open(settings, deadline)
                    self._send_within(smtp, deadline, settings, message, to_address, reused=False)
            except BaseException:
                self._forget()
                raise
            self._used = time.monotonic()
            self._messages += 1

    def _kept(self, settings: Settings) -> _SMTP | None:
        key = (settings.smtp_host, settings.smtp_port, settings.smtp_starttls, settings.smtp_username,
               settings.smtp_password)
        now = time.monotonic()
        if self._smtp is not None and (key != self._key or self._smtp.aborted or self._messages >= self.MAX_MESSAGES
                                       or now - self._used > self.MAX_IDLE_SECONDS
                                       or now - self._opened > self.MAX_AGE_SECONDS):
            self._close_politely()
        self._key = key
        return self._smtp

    def _open(self, settings: Settings, deadline: float) -> _SMTP:
        assert settings.smtp_host is not None
        smtp = _SMTP(timeout=settings.email_send_timeout, local_hostname=_local_hostname())
        self._smtp, self._opened, self._used, self._messages = smtp, time.monotonic(), time.monotonic(), 0
        with _watchdog(smtp, deadline):
            smtp.connect(settings.smtp_host, settings.smtp_port)
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password or "")
        return smtp

    @staticmethod
    def _send_within(smtp: _SMTP, deadline: float, settings: Settings, message: EmailMessage, to_address: str,
                     reused: bool) -> None:
        smtp.transmitting = False
        with _watchdog(smtp, deadline):
            try:
                smtp.send_message(message, from_addr=parseaddr(settings.smtp_from)[1] or settings.smtp_from,
                                  to_addrs=[to_address])
            except smtplib.SMTPResponseException as exc:
                if reused and exc.smtp_code == 421 and not smtp.transmitting:
                    raise _StaleConnection() from exc  # "closing the channel": nothing was taken
                raise  # the server answered: it did not take the message
            except Exception as exc:
                if smtp.transmitting:
                    raise MaybeDelivered(f"{type(exc).__name__}: {exc} (after the message was sent)") from exc
                if reused and not smtp.aborted and isinstance(exc, smtplib.SMTPServerDisconnected | OSError):
                    raise _StaleConnection() from exc
                raise

    def _forget(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.close()

    def _close_politely(self) -> None:
        """QUIT a connection that is done with (a failed goodbye changes nothing)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                if smtp.sock is not None:
                    smtp.sock.settimeout(1.0)  # a goodbye is not worth waiting EMAIL_SEND_TIMEOUT for
                smtp.quit()
            with contextlib.suppress(Exception):
                smtp.close()


@contextlib.contextmanager
def _watchdog(smtp: _SMTP, deadline: float) -> Iterator[None]:
    """Abort `smtp` from a timer thread if this block is still running at `deadline` (monotonic)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        smtp.abort()
        raise smtplib.SMTPServerDisconnected("the SMTP exchange ran past EMAIL_SEND_TIMEOUT")
    timer = threading.Timer(remaining, smtp.abort)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_connections = _ConnectionCache()
