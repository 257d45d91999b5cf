"""Rendering templates that admins wrote, without trusting them.

A template is code: it can loop for hours (`{% for i in range(100000) %}` nested), build a gigabyte
(`{{ 'x' * 10**9 }}`), recurse, or raise anything. So a template never runs in the process that asked
for it. `RenderPool.render` hands each part to a helper process (`python -m app.email.sandbox`, a few
per API or worker process, started on first use and reused), which renders it in jinja2's
`ImmutableSandboxedEnvironment` (no Python internals, no `.update()`/`.pop()` on the context, no
loader: `include`, `import` and `extends` are refused) under these bounds:

- wall time: RENDER_SECONDS for the three parts together. The caller stops waiting at the deadline
  and kills the helper (a thread could not be stopped; a process can), so an API's event loop and
  its SSE streams never wait on a template; the helper's own SIGALRM ends it too should the caller
  have died meanwhile;
- output: MAX_OUTPUT characters per part, counted while rendering (`Template.generate`), and
  `*`/`+` on strings and lists refused beyond that size before the result is built;
- memory: RLIMIT_AS of MEMORY_LIMIT in the helper, so whatever slips past the checks above ends in
  a MemoryError there rather than in the swap of the host;
- CPU priority: helpers run at nice 10, behind the API and the workers.

Every failure — a syntax error, an undefined variable, a refused attribute, a ZeroDivisionError, an
overrun — is a `TemplateProblem` naming the part; the API turns it into a 422 and the email worker
fails the delivery at once. Templates travel as source and contexts as msgpack, so each render
gets its own copy of the context and nothing a template does can reach the caller's objects.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

import msgspec
from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

PARTS = ("subject", "text", "html")
RENDER_SECONDS = 2.0  # all three parts of one email; the shipped templates take about a millisecond
MAX_OUTPUT = 1_000_000  # characters per part; a real email is a few kilobytes
MEMORY_LIMIT = 256 * 2**20  # address space of a helper; a helper idles at about 30 MiB
HELPERS = 2  # per process: at most this many renders at once, so at most this many busy cores
START_SECONDS = 30.0  # a helper's start (a Python interpreter and jinja2) on a loaded machine
_FRAME = struct.Struct(">I")


class TemplateProblem(ValueError):
    """A template that does not compile or render within bounds; `part` is subject, text or html."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message


# ---- inside the helper process ---------------------------------------------------------------------------


class _Overrun(Exception):
    """A template that produces, or is about to produce, more than MAX_OUTPUT."""


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*`, `**` and `+` checked before they build something huge."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                length = _size(sequence)
                if length is not None and isinstance(times, int) and length * times > MAX_OUTPUT:
                    raise _Overrun
        elif operator == "+":
            left_size, right_size = _size(left), _size(right)
            if left_size is not None and right_size is not None and left_size + right_size > MAX_OUTPUT:
                raise _Overrun
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and right > 4096:
            raise _Overrun  # 10 ** 10 ** 9 would take minutes inside one C call
        return super().call_binop(context, operator, left, right)


_STANDALONE = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


@cache
def _environment(autoescape: bool) -> _Sandbox:
    return _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)


@lru_cache(maxsize=256)
def _compiled(source: str, autoescape: bool) -> Template:
    """Compiling is most of a render's cost; an edited template is new source, hence a new entry."""
    environment = _environment(autoescape)
    if any(True for _ in environment.parse(source).find_all(_STANDALONE)):
        raise TemplateError("include, import and extends are not available: a template must stand alone")
    return environment.from_string(source)


def render_part(source: str, autoescape: bool, context: dict[str, Any]) -> str:
    """Render one part here, in this process, with the output bound; raises whatever the template raises."""
    chunks: list[str] = []
    size = 0
    for chunk in _compiled(source, autoescape).generate(context):
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise _Overrun
        chunks.append(chunk)
    return "".join(chunks)


def render_here(template: dict[str, str], context: dict[str, Any]) -> dict[str, str]:
    """Render the three parts in this process: only for templates Bookwire ships (trusted code),
    which spares every email a round trip to a helper process."""
    out: dict[str, str] = {}
    for part in PARTS:
        try:
            out[part] = render_part(template[part], part == "html", context)
        except Exception as exc:
            raise TemplateProblem(part, _explain(exc)) from None
    return out


def _explain(exc: BaseException) -> str:
    if isinstance(exc, _Overrun | MemoryError):
        return f"the template produces too much (more than {MAX_OUTPUT:,} characters, or too much memory)"
    if isinstance(exc, RecursionError):
        return "the template recurses too deeply"
    if isinstance(exc, TemplateError):  # includes SecurityError, UndefinedError and syntax errors
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_exactly(stream: Any, count: int) -> bytes | None:
    data = stream.read(count)
    return data if len(data) == count else None


def _serve() -> None:
    """The helper's loop: read `[source, autoescape, context]` frames on stdin, answer on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.nice(10)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the frames
    requests = sys.stdin.buffer

    def send(reply: list[Any]) -> None:
        encoded = msgspec.msgpack.encode(reply)
        answers.write(_FRAME.pack(len(encoded)) + encoded)
        answers.flush()

    send(["ready"])
    while (header := _read_exactly(requests, _FRAME.size)) is not None:
        payload = _read_exactly(requests, _FRAME.unpack(header)[0])
        if payload is None:
            return
        source, autoescape, context = msgspec.msgpack.decode(payload)
        # Default SIGALRM action ends the process: the bound holds even if the caller died meanwhile.
        signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS + 1)
        try:
            reply = ["ok", render_part(source, autoescape, context)]
        except Exception as exc:  # every way a template can fail is the template's problem
            reply = ["error", _explain(exc)]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        send(reply)


# ---- in the caller -----------------------------------------------------------------------------------------


class _Helper:
    """One helper process and the pipes to it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.email.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        if self._receive(time.monotonic() + START_SECONDS) != ["ready"]:
            self.kill()
            raise RuntimeError("the template sandbox helper did not start")

    def render(self, source: str, autoescape: bool, context: bytes, deadline: float) -> list[Any] | None:
        """The helper's reply, or None when it overran `deadline` or died (then it is gone)."""
        request = msgspec.msgpack.encode([source, autoescape, msgspec.Raw(context)])
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(_FRAME.pack(len(request)) + request)
            self.process.stdin.flush()
        except OSError:
            self.kill()
            return None
        reply = self._receive(deadline)
        if reply is None:
            self.kill()
        return reply

    def _receive(self, deadline: float) -> list[Any] | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        buffer = b""
        wanted = _FRAME.size
        header_read = False
        while len(buffer) < wanted:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, wanted - len(buffer))
            if not chunk:
                return None  # the helper died (its alarm, the memory limit, a crash)
            buffer += chunk
            if len(buffer) == wanted and not header_read:
                header_read, wanted, buffer = True, _FRAME.unpack(buffer)[0], b""
        reply: list[Any] = msgspec.msgpack.decode(buffer)
        return reply

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class RenderPool:
    """Up to `size` helper processes, started on demand; thread-safe, blocking (call it from a thread
    when on an event loop)."""

    def __init__(self, size: int = HELPERS, seconds: float = RENDER_SECONDS) -> None:
        self.seconds = seconds
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _helper(self) -> Iterator[_Helper]:
        with self._slots:
            with self._lock:
                helper = self._idle.pop() if self._idle else None
            if helper is None or not helper.alive:
                helper = _Helper()
            try:
                yield helper
            finally:
                if helper.alive:
                    with self._lock:
                        self._idle.append(helper)

    def render(self, template: dict[str, str], context: dict[str, Any]) -> dict[str, str]:
        """The three parts rendered (html autoescaped), or TemplateProblem naming the part that failed."""
        encoded = msgspec.msgpack.encode(context)
        out: dict[str, str] = {}
        with self._helper() as helper:
            deadline = time.monotonic() + self.seconds
            for part in PARTS:
                reply = helper.render(template[part], part == "html", encoded, deadline)
                if reply is None:
                    raise TemplateProblem(part, f"the template takes too long to render (over {self.seconds:g} s), "
                                                "or uses too much memory")
                if reply[0] != "ok":
                    raise TemplateProblem(part, str(reply[1]))
                out[part] = str(reply[1])
        return out

    def close(self) -> None:
        """Stop the idle helpers (busy ones stop when their caller is done with them)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.kill()


_pools: dict[int, RenderPool] = {}
_pools_lock = threading.Lock()


def render_pool() -> RenderPool:
    """This process's pool (one per pid, so a forked child never shares its parent's pipes)."""
    with _pools_lock:
        pool = _pools.get(os.getpid())
        if pool is None:
            pool = _pools[os.getpid()] = RenderPool()
        return pool


if __name__ == "__main__":
    _serve()
