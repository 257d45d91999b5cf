"""The browser client over a long run: memory and CPU of a headless page that runs `/client/bookwire.js`
while events arrive at a steady rate (issue 10).

    .venv/bin/python bench/client_soak.py                                   # one hour, 10 events/s, transport auto
    .venv/bin/python bench/client_soak.py --seconds 120 --sample-every 15 --warmup 20   # a quick look
    .venv/bin/python bench/client_soak.py --transport poll --seconds 600 --json bench/results/soak-poll.json

It starts a private Redis (EmbeddedRedis, no persistence), a scratch SQLite database, `bookwire
migrate` and one `bookwire api` process (as the other benchmarks do; SQLite is enough: the events
go through Redis, the database only holds the two users) with an admin (`ADMIN_EMAIL`/
`ADMIN_PASSWORD`) and a short `SSE_MAX_AGE` (`--sse-max-age`, 5m), so that the server ends the
stream with `stream.closing` every ~5 minutes and the client reconnects during the run. It
registers one customer.

One headless Chromium page on the API's origin (`/health`, like tests/integration/
test_browser_client.py) imports `/client/bookwire.js` and runs `new Bookwire({getAccessToken,
transport})` with `bw.on("*", ...)` doing what a page does with an event: keep the last `--keep`
(50) envelopes in an array and show them in a `<ul>` (newest first, oldest removed), and a counter.
`getAccessToken` signs in again (`POST /v1/auth/token`) five minutes before the access token
expires, as a real page must (the API's tokens live an hour; there is no refresh token).

The publisher (this process, one keep-alive httpx connection, the admin's token) sends `--rate`
events/s to `user:<customer id>` with `POST /v1/events`, each due at `start + k/rate` (a schedule:
a slow answer is caught up, not added to every later interval). The page does not keep the ids it
received (a growing set in the page would be the very growth being measured): it hands
`[id, delivery ms]` to this process once a second, which counts received, duplicated, missing
(sent more than `--late` s ago and not received) and out-of-order ids.

After `--warmup` seconds (240: the client remembers the last 2,000 ids to drop duplicates, 200 s at
10 events/s; that fill is not a leak) and then every `--sample-every` seconds, through the Chrome
DevTools Protocol: `HeapProfiler.collectGarbage` (twice), then the V8 heap in use (`JSHeapUsedSize`)
and Blink's own heap (Oilpan, where DOM nodes, AbortControllers and listener registrations live:
`Runtime.getHeapUsage` `embedderHeapUsedSize`): only what is still reachable, so a rise is retained
memory. Also the renderer's RSS, `Nodes`, `JSEventListeners` (every listener added from JS to any
EventTarget, AbortSignals included), and the renderer's CPU (`ProcessTime`: the page's renderer
process, all threads, read before the collections so that their cost falls on the next interval;
`TaskDuration`: its main thread's busy time). The CPU of the other Chromium processes (browser,
network service, GPU) comes from `SystemInfo.getProcessInfo`.

Playwright keeps DevTools' Network domain enabled, and Chromium then keeps a record of every request
and a copy of each response body in the renderer: that shows in the renderer's RSS and, per request,
a little in Blink's heap; a page without DevTools attached has neither. At the end the benchmark
reports how many MB of the finished streams' bodies DevTools held.

Summary: for each memory figure, its value at the first sample and the last, the growth in MB and
per hour, the least-squares slope over all samples, and the growth of its floor (lowest of the last
quarter of the samples against the lowest of the first); listeners and nodes likewise; renderer CPU
s per hour and % of one core; events sent/received/duplicated/missing/out of order; connections
opened (streams, long-polls), state changes, stream.reset. `--client PATH` measures another copy of
the client (e.g. a candidate fix); `--payload N` pads each event (magnifies what is kept per byte).
Exit status 1 when an event was lost, duplicated or out of order, or the API logged a traceback;
130 when interrupted (Ctrl-C or SIGTERM: the browser, the API and Redis are stopped either way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from common import PASSWORD, api_server, fmt, keep_log, percentile, server_log_problems, table  # noqa: E402
from procs import cpu_seconds, interrupt_on_sigterm, machine_busy_seconds  # noqa: E402

from app.embedded_redis import EmbeddedRedis  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_EMAIL = "soak-admin@bookwire.test"
ADMIN_PASSWORD = "soak-admin-password-1"
EVENT_TYPE = "soak.tick"
DRAIN_SECONDS = 1.0          # how often the page hands its received ids over
BOOT_TIMEOUT_MS = 30_000
MB = 1024 * 1024

# The page: a small live list, as the portal's pages keep one. `soak.out` is emptied by drain()
# every second, so the page itself keeps nothing that grows with the number of events.
BOOT = """async ({token, expiresIn, email, password, transport, keep}) => {
  const { Bookwire } = await import("/client/bookwire.js");
  document.documentElement.innerHTML = `<head><title>soak</title></head><body>
    <p>state <b id="state">offline</b>, <b id="count">0</b> events</p><ul id="events"></ul></body>`;
  const soak = window.soak = { out: [], states: [], resets: 0, signIns: 0, total: 0 };
  let access = token;
  let renewAt = Date.now() + (expiresIn - 300) * 1000;
  const getAccessToken = async () => {
    if (Date.now() >= renewAt) {  // no refresh token in this API: sign in again before it expires
      renewAt = Date.now() + 60_000;  // one attempt a minute, whatever happens
      const answer = await fetch("/v1/auth/token", { method: "POST", headers: { "Content-Type": "application/json" },
                                                     body: JSON.stringify({ email, password }) });
      if (answer.ok) {
        const body = await answer.json();
        access = body.access_token;
        renewAt = Date.now() + (body.expires_in - 300) * 1000;
        soak.signIns += 1;
      }
    }
    return access;
  };
  const last = [];
  const list = document.getElementById("events");
  const count = document.getElementById("count");
  const stateShown = document.getElementById("state");
  const bw = new Bookwire({ getAccessToken, transport });
  bw.on("*", (e) => {
    soak.total += 1;
    last.push(e);
    if (last.length > keep) last.shift();
    const item = document.createElement("li");
    item.textContent = `${e.type} ${e.id} #${e.data && e.data.seq}`;
    list.prepend(item);
    if (list.childElementCount > keep) list.lastElementChild.remove();
    count.textContent = String(soak.total);
    soak.out.push([e.id, Date.now() - ((e.data && e.data.t) || 0)]);
  });
  bw.on("state", (s) => { soak.states.push([s, Date.now()]); stateShown.textContent = s; });
  bw.on("reset", () => { soak.resets += 1; });
  window.drain = () => {
    const taken = { events: soak.out, states: soak.states, resets: soak.resets, signIns: soak.signIns,
                    state: bw.state, total: soak.total };
    soak.out = [];
    soak.states = [];
    return taken;
  };
  bw.start();
  window.bw = bw;
}"""


# --------------------------------------------------------------------------------------------------
# What is counted


@dataclass
class Sample:
    """One row of the table: figures at `t` seconds after the warm-up ended (cumulative unless `_iv`)."""

    label: str
    t: float
    heap_mb: float               # V8's heap in use (JSHeapUsedSize): JS objects, closures, strings
    blink_mb: float              # Blink's own heap in use (Oilpan; Runtime.getHeapUsage embedderHeapUsedSize):
                                 # DOM nodes, AbortControllers, listener registrations, fetch requests
    rss_mb: float                # the renderer process's resident memory (VmRSS)
    nodes: int
    listeners: int
    documents: int
    renderer_cpu_s: float        # ProcessTime of the page's renderer, since the page opened
    main_task_s: float           # TaskDuration of its main thread
    style_layout_s: float        # RecalcStyleDuration + LayoutDuration (the page's list, not the client)
    chromium_other_cpu_s: float  # browser, network service, GPU, other renderers (SystemInfo)
    api_cpu_s: float
    machine_busy_s: float        # the whole machine (/proc/stat): shows when something else competed
    sent: int
    received: int
    duplicates: int
    missing_now: int             # sent more than --late s ago and not received (yet)
    out_of_order: int
    streams: int
    polls: int
    state_changes: int
    resets: int
    sign_ins: int
    latency_p50_ms: float        # of the events received since the previous sample
    latency_p99_ms: float
    latency_max_ms: float


@dataclass
class Tally:
    """What the publisher sent and the page received, as this process knows it."""

    sent: list[tuple[str, float]] = field(default_factory=list)   # (id, monotonic send time), in order
    sent_index: dict[str, int] = field(default_factory=dict)
    unreceived: dict[str, float] = field(default_factory=dict)    # id -> monotonic send time
    received: dict[str, int] = field(default_factory=dict)        # id -> times received
    unknown: set[str] = field(default_factory=set)                # received before its POST answered
    duplicates: int = 0
    out_of_order: int = 0
    last_index: int = -1
    latencies: list[float] = field(default_factory=list)          # since the previous sample
    publish_failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    max_behind_s: float = 0.0                                     # publisher lateness against its schedule
    states: list[tuple[str, float]] = field(default_factory=list)
    resets: int = 0
    sign_ins: int = 0
    page_total: int = 0
    state: str = "offline"
    streams: int = 0
    polls: int = 0
    stream_tokens: int = 0
    page_errors: list[str] = field(default_factory=list)

    def on_sent(self, event_id: str, at: float) -> None:
        self.sent_index[event_id] = len(self.sent)
        self.sent.append((event_id, at))
        if event_id in self.unknown:  # the page was faster than the POST's answer
            self.unknown.discard(event_id)
            self._order(event_id)
        elif event_id not in self.received:
            self.unreceived[event_id] = at

    def on_received(self, event_id: str, latency_ms: float) -> None:
        self.latencies.append(latency_ms)
        if event_id in self.received:
            self.received[event_id] += 1
            self.duplicates += 1
            return
        self.received[event_id] = 1
        if event_id in self.sent_index:
            self.unreceived.pop(event_id, None)
            self._order(event_id)
        else:
            self.unknown.add(event_id)

    def _order(self, event_id: str) -> None:
        index = self.sent_index[event_id]
        if index < self.last_index:
            self.out_of_order += 1
        self.last_index = max(self.last_index, index)

    def missing(self, older_than: float) -> int:
        return sum(1 for at in self.unreceived.values() if at < older_than)


# --------------------------------------------------------------------------------------------------
# The publisher


async def sign_in(http: httpx.AsyncClient, email: str, password: str) -> tuple[str, int]:
    """An access token and its lifetime in seconds."""
    answer = await http.post("/v1/auth/token", json={"email": email, "password": password})
    if answer.status_code != 200:
        raise RuntimeError(f"sign in as {email}: {answer.status_code} {answer.text[:300]}")
    body = answer.json()
    return body["access_token"], int(body["expires_in"])


async def publish(base_url: str, user_id: str, rate: float, stop_at: float, tally: Tally, payload: int = 0) -> None:
    """`rate` events/s to `user:<user_id>` until `stop_at` (monotonic), each due at start + k/rate;
    `payload` characters of padding in each event's data."""
    pad = "x" * payload
    async with httpx.AsyncClient(base_url=base_url, timeout=10,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as http:
        token, ttl = await sign_in(http, ADMIN_EMAIL, ADMIN_PASSWORD)
        token_at = time.monotonic()
        start = time.monotonic()
        k = 0
        while True:
            due = start + k / rate
            if due >= stop_at:
                return
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                tally.max_behind_s = max(tally.max_behind_s, now - due)
            if time.monotonic() - token_at > ttl / 2:  # the admin's token expires after ACCESS_TOKEN_TTL too
                token, ttl = await sign_in(http, ADMIN_EMAIL, ADMIN_PASSWORD)
                token_at = time.monotonic()
            data: dict[str, Any] = {"seq": k, "t": time.time() * 1000}
            if pad:
                data["pad"] = pad
            body = {"type": EVENT_TYPE, "channels": [f"user:{user_id}"], "data": data}
            sent_at = time.monotonic()
            try:
                answer = await http.post("/v1/events", json=body, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                tally.publish_failures += 1
                if len(tally.failure_samples) < 5:
                    tally.failure_samples.append(repr(exc))
            else:
                if answer.status_code == 202:
                    tally.on_sent(answer.json()["id"], sent_at)
                else:
                    tally.publish_failures += 1
                    if len(tally.failure_samples) < 5:
                        tally.failure_samples.append(f"{answer.status_code} {answer.text[:200]}")
            k += 1


# --------------------------------------------------------------------------------------------------
# The page and its measurements


class Browser:
    """The page, its CDP sessions, and the counters that come from the page."""

    def __init__(self, page: Any, cdp: Any, browser_cdp: Any, tally: Tally) -> None:
        self.page, self.cdp, self.browser_cdp, self.tally = page, cdp, browser_cdp, tally
        self.gc_cpu_s = 0.0  # renderer CPU spent in the forced collections (approximate: 10 ms ticks)
        self.renderer_pid: int | None = None

    async def drain(self) -> None:
        """Take what the page received since the last drain."""
        taken = await self.page.evaluate("() => window.drain()")
        for event_id, latency in taken["events"]:
            self.tally.on_received(event_id, float(latency))
        self.tally.states.extend((s, at / 1000) for s, at in taken["states"])
        self.tally.resets, self.tally.sign_ins = taken["resets"], taken["signIns"]
        self.tally.state, self.tally.page_total = taken["state"], taken["total"]

    async def metrics(self) -> dict[str, float]:
        answer = await self.cdp.send("Performance.getMetrics")
        return {m["name"]: float(m["value"]) for m in answer["metrics"]}

    async def chromium_cpu(self, renderer_cpu: float) -> float:
        """CPU of every Chromium process but the page's renderer (whose ProcessTime we have); also
        finds the renderer's pid the first time: the renderer whose CPU time is the page's
        ProcessTime (the others, a spare renderer and the UI's, hardly run)."""
        info = await self.browser_cdp.send("SystemInfo.getProcessInfo")
        processes = info["processInfo"]
        if self.renderer_pid is None:
            renderers = [p for p in processes if p["type"] == "renderer"]
            if renderers:
                self.renderer_pid = int(min(renderers, key=lambda p: abs(float(p["cpuTime"]) - renderer_cpu))["id"])
        return sum(float(p["cpuTime"]) for p in processes) - renderer_cpu

    def renderer_rss_mb(self) -> float:
        with contextlib.suppress(OSError, TypeError):
            for line in Path(f"/proc/{self.renderer_pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    async def sample(self, label: str, t: float, api_pid: int, late: float) -> Sample:
        await self.drain()
        before = await self.metrics()  # CPU before the forced collection
        other = await self.chromium_cpu(before["ProcessTime"])
        # Twice: the first collection may leave Blink's heap partly unswept, which would show as noise.
        await self.cdp.send("HeapProfiler.collectGarbage")
        await self.cdp.send("HeapProfiler.collectGarbage")
        after = await self.metrics()
        usage = await self.cdp.send("Runtime.getHeapUsage")
        self.gc_cpu_s += after["ProcessTime"] - before["ProcessTime"]
        tally = self.tally
        lat, tally.latencies = tally.latencies, []
        return Sample(
            label=label, t=t, heap_mb=after["JSHeapUsedSize"] / MB,
            blink_mb=float(usage.get("embedderHeapUsedSize", float("nan"))) / MB, rss_mb=self.renderer_rss_mb(),
            nodes=int(after["Nodes"]), listeners=int(after["JSEventListeners"]), documents=int(after["Documents"]),
            renderer_cpu_s=before["ProcessTime"], main_task_s=before["TaskDuration"],
            style_layout_s=before["RecalcStyleDuration"] + before["LayoutDuration"],
            chromium_other_cpu_s=other, api_cpu_s=cpu_seconds(api_pid) or 0.0,
            machine_busy_s=machine_busy_seconds(),
            sent=len(tally.sent), received=len(tally.received), duplicates=tally.duplicates,
            missing_now=tally.missing(time.monotonic() - late), out_of_order=tally.out_of_order,
            streams=tally.streams, polls=tally.polls, state_changes=len(tally.states), resets=tally.resets,
            sign_ins=tally.sign_ins, latency_p50_ms=percentile(lat, 0.5), latency_p99_ms=percentile(lat, 0.99),
            latency_max_ms=max(lat) if lat else float("nan"),
        )


async def devtools_bodies(responses: list[Any]) -> int:
    """Bytes of the finished streams' bodies that DevTools still holds for the page. Playwright keeps
    the Network domain enabled, and Chromium then keeps a copy of each response body in the renderer
    (to answer Network.getResponseBody), up to its buffer limits: memory a page without DevTools
    attached does not use, but which shows in the renderer's RSS here."""
    total = 0
    for response in responses:
        with contextlib.suppress(Exception):  # evicted, or never finished: nothing held
            total += len(await asyncio.wait_for(response.body(), timeout=10))
    return total


def on_request(tally: Tally, url: str) -> None:
    """Count the connections the client opens (a stream per reconnect; a long-poll per answer)."""
    path = httpx.URL(url).path
    if path == "/v1/events/stream":
        tally.streams += 1
    elif path == "/v1/events/poll":
        tally.polls += 1
    elif path == "/v1/auth/stream-token":
        tally.stream_tokens += 1


@dataclass
class Run:
    """What a run gathered; filled as it goes, so that an interrupted run still reports its samples."""

    samples: list[Sample] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    gc_cpu_s: float = 0.0
    chromium: str = "?"
    devtools_stream_bytes: int | None = None


async def soak(base_url: str, api_pid: int, args: argparse.Namespace, run: Run) -> None:
    """Run the page and the publisher, filling `run`."""
    from playwright.async_api import async_playwright

    tally, samples = run.tally, run.samples
    streams: list[Any] = []  # Playwright's responses of the streams the page opened
    email = f"soak-{uuid.uuid4().hex[:10]}@example.test"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        answer = await http.post("/v1/auth/register", json={"email": email, "password": PASSWORD,
                                                            "name": "Soak customer", "role": "customer"})
        if answer.status_code != 201:
            raise RuntimeError(f"register: {answer.status_code} {answer.text[:300]}")
        customer_id = answer.json()["user"]["id"]
        token, expires_in = answer.json()["access_token"], int(answer.json()["expires_in"])
        await sign_in(http, ADMIN_EMAIL, ADMIN_PASSWORD)  # fail early when the admin is missing

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        run.chromium = chromium.version
        try:
            context = await chromium.new_context()
            page = await context.new_page()
            page.on("request", lambda request: on_request(tally, request.url))
            page.on("response", lambda response: streams.append(response)
                    if httpx.URL(response.url).path == "/v1/events/stream" else None)
            page.on("pageerror", lambda error: tally.page_errors.append(str(error)[:300]))
            await page.goto(f"{base_url}/health")
            if args.client:  # another copy of the client, for the page's import only (see --client)
                await page.route(f"{base_url}/client/bookwire.js", lambda route: route.fulfill(
                    path=str(args.client), headers={"Content-Type": "text/javascript", "Cache-Control": "no-store"}))
            cdp = await context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            browser = Browser(page, cdp, await chromium.new_browser_cdp_session(), tally)
            await page.evaluate(BOOT, {"token": token, "expiresIn": expires_in, "email": email,
                                       "password": PASSWORD, "transport": args.transport, "keep": args.keep})
            await page.wait_for_function("() => ['live', 'polling'].includes(window.bw.state)",
                                         timeout=BOOT_TIMEOUT_MS)
            if args.client:
                # While a route is set, Playwright pauses every request of the page over CDP: remove it
                # once the module is loaded, so that both variants are measured the same way.
                await page.unroute_all()
            print(f"page up ({await page.evaluate('() => bw.state')}); chromium {chromium.version}; "
                  f"warming up for {args.warmup:.0f} s", flush=True)

            begin = time.monotonic()
            measured_from = begin + args.warmup
            stop_at = measured_from + args.seconds
            publisher = asyncio.create_task(publish(base_url, customer_id, args.rate, stop_at, tally,
                                                    args.payload))

            async def drain_forever() -> None:
                while True:
                    await asyncio.sleep(DRAIN_SECONDS)
                    await browser.drain()

            drainer = asyncio.create_task(drain_forever())
            try:
                # Samples at the end of the warm-up, then every --sample-every s, and at the end.
                marks = [measured_from + i * args.sample_every
                         for i in range(int(args.seconds // args.sample_every) + 1)]
                if marks[-1] < stop_at - 1e-6:
                    marks.append(stop_at)
                header_printed = False
                for i, mark in enumerate(marks):
                    while (wait := mark - time.monotonic()) > 0:
                        if publisher.done():
                            publisher.result()  # raise what stopped it
                        await asyncio.sleep(min(wait, 1.0))
                    label = "start" if i == 0 else "end" if i == len(marks) - 1 else str(i)
                    samples.append(await browser.sample(label, time.monotonic() - measured_from, api_pid, args.late))
                    rows = sample_rows(samples)
                    if not header_printed:
                        print(rows.splitlines()[0] + "\n" + rows.splitlines()[1], flush=True)
                        header_printed = True
                    print(rows.splitlines()[-1], flush=True)
                await publisher
                # The last events: wait until every one sent has arrived, or --drain-timeout.
                for _ in range(int(args.drain_timeout * 2)):  # the drainer task fills `unreceived` meanwhile
                    if not tally.unreceived:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(1.5)  # one more drain, and time for a duplicate to show
            finally:
                drainer.cancel()
                publisher.cancel()
                await asyncio.gather(drainer, publisher, return_exceptions=True)
                run.gc_cpu_s = browser.gc_cpu_s
            await browser.drain()
            run.devtools_stream_bytes = await devtools_bodies(streams[:-1])
        finally:
            await chromium.close()


# --------------------------------------------------------------------------------------------------
# Figures


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time (seconds), per hour; NaN for fewer than 2 points."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def sample_rows(samples: list[Sample]) -> str:
    header = ["sample", "min", "JS heap MB", "Δ", "Blink MB", "Δ", "RSS MB", "nodes", "listeners",
              "rend. CPU s", "% core",
              "main task s", "sent", "received", "dup", "missing", "order", "lat p50 ms", "lat p99 ms",
              "streams", "polls", "states", "machine cores"]
    rows = []
    first = samples[0]
    for i, s in enumerate(samples):
        prev = samples[i - 1] if i else None
        cpu = s.renderer_cpu_s - prev.renderer_cpu_s if prev else None
        task = s.main_task_s - prev.main_task_s if prev else None
        pct = 100 * cpu / (s.t - prev.t) if prev and cpu is not None and s.t > prev.t else None
        busy = (s.machine_busy_s - prev.machine_busy_s) / (s.t - prev.t) if prev and s.t > prev.t else None
        rows.append([s.label, f"{s.t / 60:.1f}", f"{s.heap_mb:.3f}", f"{s.heap_mb - first.heap_mb:+.3f}",
                     f"{s.blink_mb:.3f}", f"{s.blink_mb - first.blink_mb:+.3f}", f"{s.rss_mb:.1f}",
                     str(s.nodes), str(s.listeners), fmt(cpu, 2), fmt(pct, 2), fmt(task, 2), str(s.sent),
                     str(s.received), str(s.duplicates), str(s.missing_now), str(s.out_of_order),
                     fmt(s.latency_p50_ms), fmt(s.latency_p99_ms), str(s.streams), str(s.polls),
                     str(s.state_changes), fmt(busy, 2)])
    return table(header, rows)


def growth(name: str, values: list[float], samples: list[Sample]) -> dict[str, float]:
    """Start, end, min, max, growth (MB and MB per hour), least-squares slope, and the growth of the
    floor: the lowest value of the last quarter of the samples against that of the first quarter.
    A sample is sometimes taken while a little more is still reachable (a request in flight: a few
    hundred KB of Blink's heap for one sample), so the floor is what stays whatever the moment."""
    hours = (samples[-1].t - samples[0].t) / 3600
    change = values[-1] - values[0]
    quarter = max(1, len(values) // 4)
    floor_hours = (sum(s.t for s in samples[-quarter:]) - sum(s.t for s in samples[:quarter])) / quarter / 3600
    floor_change = min(values[-quarter:]) - min(values[:quarter])
    return {f"{name}_start_mb": values[0], f"{name}_end_mb": values[-1], f"{name}_min_mb": min(values),
            f"{name}_max_mb": max(values), f"{name}_growth_mb": change,
            f"{name}_growth_mb_per_hour": change / hours if hours > 0 else float("nan"),
            f"{name}_slope_mb_per_hour": slope_per_hour([(s.t, v) for s, v in zip(samples, values, strict=True)]),
            f"{name}_floor_growth_mb_per_hour": floor_change / floor_hours if floor_hours > 0 else float("nan")}


def summarize(samples: list[Sample], tally: Tally, gc_cpu_s: float) -> dict[str, Any]:
    """The figures of the summary (between the first sample, after the warm-up, and the last)."""
    first, last = samples[0], samples[-1]
    span = last.t - first.t
    hours = span / 3600 if span > 0 else float("nan")
    cpu = last.renderer_cpu_s - first.renderer_cpu_s
    task = last.main_task_s - first.main_task_s
    sent_in_span = last.sent - first.sent
    states: dict[str, int] = {}
    for state, _ in tally.states:
        states[state] = states.get(state, 0) + 1
    sent_ids = {event_id for event_id, _ in tally.sent}
    return {
        "span_s": span,
        **growth("heap", [s.heap_mb for s in samples], samples),
        **growth("blink", [s.blink_mb for s in samples], samples),
        **growth("both_heaps", [s.heap_mb + s.blink_mb for s in samples], samples),
        **growth("rss", [s.rss_mb for s in samples], samples),
        "listeners_start": first.listeners, "listeners_end": last.listeners,
        "listeners_slope_per_hour": slope_per_hour([(s.t, float(s.listeners)) for s in samples]),
        "nodes_start": first.nodes, "nodes_end": last.nodes,
        "nodes_slope_per_hour": slope_per_hour([(s.t, float(s.nodes)) for s in samples]),
        "renderer_cpu_s": cpu,
        "renderer_cpu_s_per_hour": cpu / hours if span > 0 else float("nan"),
        "renderer_core_pct": 100 * cpu / span if span > 0 else float("nan"),
        "renderer_cpu_ms_per_event": 1000 * cpu / sent_in_span if sent_in_span else float("nan"),
        "forced_gc_cpu_s": gc_cpu_s,
        "main_task_s": task, "main_task_core_pct": 100 * task / span if span > 0 else float("nan"),
        "style_layout_s": last.style_layout_s - first.style_layout_s,
        "chromium_other_cpu_s": last.chromium_other_cpu_s - first.chromium_other_cpu_s,
        "api_cpu_s": last.api_cpu_s - first.api_cpu_s,
        "machine_busy_cores": (last.machine_busy_s - first.machine_busy_s) / span if span > 0 else float("nan"),
        "events_sent": len(tally.sent),
        "events_received": sum(1 for event_id in tally.received if event_id in sent_ids),
        "events_duplicated": tally.duplicates,
        "events_missing": len(tally.unreceived),
        "events_out_of_order": tally.out_of_order,
        "events_unexpected": len(tally.unknown),
        "page_total": tally.page_total,
        "publish_failures": tally.publish_failures, "publish_failure_samples": tally.failure_samples,
        "publisher_max_behind_s": tally.max_behind_s,
        "streams_opened": tally.streams, "polls": tally.polls, "stream_tokens": tally.stream_tokens,
        "state_changes": len(tally.states), "states": states,
        "state_sequence": [s for s, _ in tally.states][:40],
        "resets": tally.resets, "page_sign_ins": tally.sign_ins, "page_errors": tally.page_errors[:10],
    }


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    s = summary
    lines = [
        f"over {s['span_s'] / 60:.1f} min after a {args.warmup:.0f} s warm-up, {args.rate:g} events/s, "
        f"transport {args.transport}, SSE_MAX_AGE {args.sse_max_age}",
        *(f"{title}: {s[f'{key}_start_mb']:.3f} MB at the start, {s[f'{key}_end_mb']:.3f} MB at the end "
          f"(min {s[f'{key}_min_mb']:.3f}, max {s[f'{key}_max_mb']:.3f}); growth {s[f'{key}_growth_mb']:+.3f} MB = "
          f"{s[f'{key}_growth_mb_per_hour']:+.3f} MB/h; least-squares slope {s[f'{key}_slope_mb_per_hour']:+.3f} MB/h; "
          f"floor {s[f'{key}_floor_growth_mb_per_hour']:+.3f} MB/h"
          for key, title in [("heap", "JS heap (V8, after forced GCs)"), ("blink", "Blink heap (Oilpan)"),
                             ("both_heaps", "both heaps"), ("rss", "renderer RSS")]),
        f"JS event listeners: {s['listeners_start']} -> {s['listeners_end']} "
        f"(slope {s['listeners_slope_per_hour']:+.1f}/h); DOM nodes: {s['nodes_start']} -> {s['nodes_end']} "
        f"(slope {s['nodes_slope_per_hour']:+.1f}/h)",
        f"renderer CPU: {s['renderer_cpu_s']:.2f} s = {s['renderer_cpu_s_per_hour']:.1f} s/h = "
        f"{s['renderer_core_pct']:.2f} % of one core, {s['renderer_cpu_ms_per_event']:.3f} ms per event "
        f"(includes {s['forced_gc_cpu_s']:.2f} s of the benchmark's forced GCs); main thread busy "
        f"{s['main_task_s']:.2f} s ({s['main_task_core_pct']:.2f} %), of it style and layout "
        f"{s['style_layout_s']:.2f} s",
        f"other Chromium processes (browser, network service, GPU): {s['chromium_other_cpu_s']:.2f} s; "
        f"API process: {s['api_cpu_s']:.2f} s; the whole machine was busy {s['machine_busy_cores']:.2f} of "
        f"{os.cpu_count()} cores on average (this benchmark's processes and anything else)",
        f"events: sent {s['events_sent']}, received {s['events_received']}, duplicated {s['events_duplicated']}, "
        f"missing {s['events_missing']}, out of order {s['events_out_of_order']}, unexpected "
        f"{s['events_unexpected']}; publish failures {s['publish_failures']}; publisher at most "
        f"{s['publisher_max_behind_s']:.2f} s behind its schedule",
        f"connections: {s['streams_opened']} streams ({max(0, s['streams_opened'] - 1)} reconnections), "
        f"{s['polls']} long-polls, {s['stream_tokens']} stream tokens; {s['state_changes']} state changes "
        f"{s['states']}; {s['resets']} stream.reset; the page signed in again {s['page_sign_ins']} times",
    ]
    if s["publish_failure_samples"]:
        lines.append(f"publish failures, e.g.: {s['publish_failure_samples']}")
    if s["page_errors"]:
        lines.append(f"!! page errors: {s['page_errors']}")
    return "\n".join(lines)


def no_nan(value: Any) -> Any:
    """`value` with NaN (a figure that could not be measured) as null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores ({model}, {platform.machine()}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def client_file(args: argparse.Namespace) -> str:
    """Which client is measured, with the start of its sha256 (the file may change during a long run;
    the page loads it once, at the start)."""
    path = args.client or REPO / "app" / "static" / "client" / "bookwire.js"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} (sha256 {digest}…)"


def describe_code() -> str:
    """The commit measured, and whether the client or the app had uncommitted changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "app")
    return commit + (" (app/ has uncommitted changes)" if dirty else "")


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["auto", "sse", "poll"], default="auto")
    parser.add_argument("--seconds", type=float, default=3600, help="measured time after the warm-up (3600)")
    parser.add_argument("--rate", type=float, default=10, help="events per second to the page (10)")
    parser.add_argument("--sample-every", type=float, default=60, help="seconds between samples (60)")
    parser.add_argument("--warmup", type=float, default=240,
                        help="seconds of events before the first sample (240: the client's 2,000 remembered ids fill)")
    parser.add_argument("--sse-max-age", default="5m", help="the API's SSE_MAX_AGE: streams end (and the client "
                        "reconnects) after this ±10 %% (5m)")
    parser.add_argument("--keep", type=int, default=50, help="events the page keeps and lists (50)")
    parser.add_argument("--payload", type=int, default=0, help="characters of padding in each event (0): "
                        "magnifies memory kept per byte received")
    parser.add_argument("--late", type=float, default=5, help="an event not received this many s after it was "
                        "sent counts as missing in a sample (5)")
    parser.add_argument("--drain-timeout", type=float, default=30, help="seconds to wait for the last events (30)")
    parser.add_argument("--client", type=Path, help="measure this file instead of the app's /client/bookwire.js "
                        "(e.g. a candidate fix; served to the page's import only)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="copy the API log to bench/results/")
    args = parser.parse_args(argv)
    if args.client and not args.client.is_file():
        parser.error(f"--client {args.client}: no such file")
    if args.rate <= 0 or args.seconds <= 0 or args.sample_every <= 0 or args.warmup < 0:
        parser.error("--rate, --seconds and --sample-every must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("the Python package playwright is missing (.venv/bin/pip install playwright)", file=sys.stderr)
        return 2
    interrupt_on_sigterm()
    busy0 = machine_busy_seconds()
    time.sleep(1.0)
    idle_load = machine_busy_seconds() - busy0
    code = describe_code()
    client = client_file(args)
    print(f"bench/client_soak.py: {args.rate:g} events/s for {args.seconds:.0f} s (+{args.warmup:.0f} s warm-up), "
          f"transport {args.transport}, sample every {args.sample_every:g} s, SSE_MAX_AGE {args.sse_max_age}; "
          f"code {code}, client {client}\nmachine: {machine()}; "
          f"before starting, the machine was busy {idle_load:.2f} of {os.cpu_count()} cores", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="bookwire-client-soak-"))
    redis = EmbeddedRedis(data_dir / "redis", persist=False)
    run = Run()
    interrupted = None
    log_problems = (0, 0, "")
    try:
        redis_url = redis.start()
        # SQLite: the events go through Redis; the database only holds the two users.
        with api_server("sqlite", data_dir, redis_url, ADMIN_EMAIL=ADMIN_EMAIL, ADMIN_PASSWORD=ADMIN_PASSWORD,
                        SSE_MAX_AGE=args.sse_max_age) as api:
            print(f"api pid {api.process.pid} at {api.base_url} (SQLite)", flush=True)
            try:
                asyncio.run(soak(api.base_url, api.process.pid, args, run))
            finally:
                log_problems = server_log_problems(api.log)
                if args.keep_logs or log_problems[0]:
                    print(f"API log: {keep_log(api.log, 'client-soak-api')}")
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the browser, the API and Redis are stopped
        interrupted = str(exc) or "Ctrl-C"
    finally:
        redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    if not run.samples:
        print(f"\n!! interrupted ({interrupted}) before the first sample" if interrupted else "\n!! no samples")
        return 130 if interrupted else 1
    samples = run.samples
    summary = summarize(samples, run.tally, run.gc_cpu_s)
    summary["devtools_stream_body_mb"] = (None if run.devtools_stream_bytes is None
                                          else run.devtools_stream_bytes / MB)
    print("\n" + sample_rows(samples))
    print("columns: JS heap = JSHeapUsedSize and Blink = embedderHeapUsedSize (Runtime.getHeapUsage), both after "
          "HeapProfiler.collectGarbage (twice), Δ from the first sample; RSS = the renderer's VmRSS; "
          "listeners = JSEventListeners; "
          "rend. CPU s = the page's renderer process since the previous sample (ProcessTime), % core of it; "
          "main task s = its main thread busy (TaskDuration); missing = sent > --late s ago, not received yet; "
          "order = received out of order; lat = publish -> page handler, events since the previous sample; "
          "streams/polls/states = cumulative; machine cores = the whole machine's busy cores (/proc/stat)")
    print("\n" + report(summary, args))
    if summary["devtools_stream_body_mb"] is not None:
        print(f"DevTools held {summary['devtools_stream_body_mb']:.2f} MB of the finished streams' bodies in the "
              "renderer at the end (part of its RSS, not of the heaps; only because DevTools is attached)")
    print(f"API log: {log_problems[0]} tracebacks, {log_problems[1]} ERROR/WARNING lines")
    if log_problems[2]:
        print(log_problems[2])
    ok = (summary["events_missing"] == 0 and summary["events_duplicated"] == 0
          and summary["events_out_of_order"] == 0 and summary["events_unexpected"] == 0
          and summary["events_sent"] > 0 and log_problems[0] == 0)
    if interrupted:
        print(f"!! interrupted ({interrupted}): the figures cover what was done (events still in flight count "
              "as missing)")
    else:
        print("OK: every event arrived once, in order" if ok else "!! FAILED: events lost, duplicated or out of "
              "order, nothing sent, or a traceback in the API log")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(no_nan({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine(), "chromium": run.chromium, "code": code, "client": client, "summary": summary,
            "samples": [asdict(s) for s in samples]}), indent=2, allow_nan=False))
    return 130 if interrupted else 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the browser, the API and Redis were stopped", file=sys.stderr)
        sys.exit(130)
