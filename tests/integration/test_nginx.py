"""infra/nginx/bookwire.conf, run by Debian's nginx in front of two `bookwire api` processes.

The two processes share one SQLite database and a private Redis, as two processes behind a load
balancer do. nginx runs as a child process (no daemon, no master) with a generated nginx.conf that
includes the site file as it is shipped, with only its `listen` port and log directory changed, and
a `bookwire/upstreams.conf` naming the two processes' loopback ports.

The module skips itself only when there is no nginx (`tests/run` installs Debian's as root).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from browser import private_redis, register
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, running_api, wait_for_http
from events import publish
from sse import SSEEvent, SSEStream, open_stream

from app.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "infra" / "nginx" / "bookwire.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
EVENT_TYPE = "test.nginx"

if not os.access(NGINX, os.X_OK):
    pytest.skip("nginx is missing (apt-get install nginx; tests/run does it as root)", allow_module_level=True)


def nginx_conf(workdir: Path, port: int, upstream_ports: list[int]) -> Path:
    """nginx.conf for a test run in `workdir`: the shipped site on 127.0.0.1:`port` in front of
    `upstream_ports`; its path."""
    site = SITE.read_text()
    # The two lines that differ from production; fail loudly if the site stops having them.
    assert site.count("listen 80;") == 1 and "/var/log/nginx/" in site, "the site's listen/log lines changed"
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};").replace("/var/log/nginx/", f"{workdir}/")
    (workdir / "bookwire.conf").write_text(site)
    (workdir / "bookwire").mkdir()
    (workdir / "bookwire" / "upstreams.conf").write_text(
        "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstream_ports))
    temp = workdir / "temp"
    temp.mkdir()
    temp_paths = "\n".join(f"    {kind}_temp_path {temp / kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = workdir / "nginx.conf"
    # `master_process off`: one process as the test's own user, so no worker switches to an
    # unprivileged user that cannot reach the temp directories under pytest's (0700) tmp_path.
    conf.write_text(f"""daemon off;
master_process off;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} info;
events {{ worker_connections 1024; }}
http {{
{temp_paths}
    include {workdir / 'bookwire.conf'};
}}
""")
    return conf


@dataclass
class Setup:
    url: str  # nginx
    apis: list[tuple[str, subprocess.Popen[bytes]]]  # (direct URL, process)
    workdir: Path
    user_id: str
    token: str
    admin: httpx.Client  # through nginx


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("nginx")
    database_url = f"sqlite:///{base / 'bookwire.sqlite3'}"
    with ExitStack() as stack:
        redis_url = stack.enter_context(private_redis(base / "redis"))
        apis = []
        for name, migrate in (("a", True), ("b", False)):  # migrations once, as in production
            data_dir = base / name
            data_dir.mkdir()
            apis.append(stack.enter_context(running_api(data_dir, redis_url, database_url, migrate=migrate,
                                                        SSE_HEARTBEAT_SECONDS="1")))
        workdir = base / "nginx"
        workdir.mkdir()
        port = free_port()
        conf = nginx_conf(workdir, port, [int(url.rsplit(":", 1)[1]) for url, _ in apis])
        stderr = stack.enter_context(open(workdir / "stderr.log", "wb"))
        nginx = subprocess.Popen([NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        stack.callback(lambda: (nginx.terminate(), nginx.wait(timeout=10)))
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/health", nginx, timeout=10)
        except RuntimeError:
            raise RuntimeError((workdir / "stderr.log").read_text() + (workdir / "error.log").read_text()) from None
        with httpx.Client(base_url=url, timeout=10) as client:
            user_id, token = register(client, "customer")
            answer = client.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            assert answer.status_code == 200, answer.text
        admin = stack.enter_context(httpx.Client(
            base_url=url, timeout=10, headers={"Authorization": f"Bearer {answer.json()['access_token']}"}))
        yield Setup(url, apis, workdir, user_id, token, admin)


def ping(setup: Setup) -> str:
    """Publish one test event to the user, through nginx; its id."""
    return publish(setup.admin, EVENT_TYPE, [f"user:{setup.user_id}"], {"n": uuid.uuid4().hex})


async def subscribe(setup: Setup, last_event_id: str | None = None) -> SSEStream:
    headers = {"Authorization": f"Bearer {setup.token}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    stream = await open_stream(f"{setup.url}/v1/events/stream", headers)
    assert stream.status == 200, (stream.status, stream.body)
    assert stream.headers["content-type"].startswith("text/event-stream"), stream.headers
    assert "content-length" not in stream.headers and "content-encoding" not in stream.headers, stream.headers
    first = await stream.next(timeout=5)
    assert first is not None and first.retry is not None, first
    return stream


async def next_ping(stream: SSEStream, timeout: float) -> SSEEvent:
    """The next test event on `stream` (other events, such as presence, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
        assert event is not None, "the stream ended"
        if event.event == EVENT_TYPE:
            return event


def sse_streams_of(api_url: str) -> float:
    """How many SSE streams this API process holds (its /metrics)."""
    text = httpx.get(f"{api_url}/metrics", timeout=5).text
    match = re.search(r'^bookwire_open_streams\{transport="sse"\} (\S+)$', text, re.MULTILINE)
    assert match, "bookwire_open_streams{transport=\"sse\"} is not in /metrics"
    return float(match.group(1))


def test_ordinary_requests_headers_and_limits(setup: Setup) -> None:
    with httpx.Client(base_url=setup.url, timeout=10) as client:
        for _ in range(6):  # least_conn over idle processes takes turns: both answer
            assert client.get("/health").status_code == 200
        me = client.get("/v1/me", headers={"Authorization": f"Bearer {setup.token}", "X-Request-ID": "nginx-rid-1"})
        assert me.status_code == 200 and me.json()["id"] == setup.user_id, me.text
        # 1 MiB body limit, enforced by nginx itself.
        big = client.post("/v1/events", content=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and "nginx" in big.text, big.text
        assert client.get("/metrics").status_code == 404  # internal only
        assert client.get("/metrics/cluster").status_code == 404
        assert client.get(f"/v1/events/stream?token={'s3cret' * 4}").status_code in (401, 403)
    log = (setup.workdir / "access.log").read_text()
    assert "rid=nginx-rid-1 " in log, log  # the client's X-Request-ID is the one passed on
    assert re.search(r"rid=[0-9a-f]{32} ", log), log  # else nginx makes one
    assert "s3cret" not in log and "token=" not in log, log  # no query strings (stream tokens) logged
    upstreams = set(re.findall(r"upstream=(127\S+)", log))  # `-` for what nginx answered itself
    assert len(upstreams) == 2, upstreams  # both processes served requests


def test_sse_is_unbuffered(setup: Setup) -> None:
    async def run() -> None:
        stream = await subscribe(setup)
        try:
            # A heartbeat comment (every 1 s here) comes through on its own, unbuffered.
            heartbeat = await stream.next(timeout=3, comments=True)
            assert heartbeat is not None and heartbeat.comment is not None, heartbeat
            # An event published after the stream opened arrives at once.
            started = time.monotonic()
            event_id = await asyncio.to_thread(ping, setup)
            event = await next_ping(stream, timeout=2)
            assert event.id == event_id and time.monotonic() - started < 1.0
        finally:
            stream.close()

    asyncio.run(run())


def test_long_poll_holds_and_returns(setup: Setup) -> None:
    with httpx.Client(base_url=setup.url, timeout=30, headers={"Authorization": f"Bearer {setup.token}"}) as client:
        cursor = client.get("/v1/events/poll", params={"timeout": 0}).json()["cursor"]
        started = time.monotonic()
        idle = client.get("/v1/events/poll", params={"timeout": 2, "cursor": cursor})
        assert idle.status_code == 200 and idle.json()["events"] == [], idle.text
        assert time.monotonic() - started >= 1.9  # nginx held it as long as the API did

        async def poll_while_publishing() -> tuple[httpx.Response, str, float]:
            async with httpx.AsyncClient(base_url=setup.url, timeout=30, headers=client.headers) as async_client:
                held = asyncio.create_task(async_client.get("/v1/events/poll",
                                                            params={"timeout": 20, "cursor": cursor}))
                await asyncio.sleep(0.5)
                published_at = time.monotonic()
                event_id = await asyncio.to_thread(ping, setup)
                answer = await held
                return answer, event_id, time.monotonic() - published_at

        answer, event_id, waited = asyncio.run(poll_while_publishing())
        assert answer.status_code == 200, answer.text
        assert [e["id"] for e in answer.json()["events"] if e["type"] == EVENT_TYPE] == [event_id]
        assert waited < 2.0, waited


def test_resume_on_the_other_process_after_a_kill(setup: Setup) -> None:
    """Last: it kills one of the two processes."""

    async def run() -> None:
        stream = await subscribe(setup)
        first = await asyncio.to_thread(ping, setup)
        assert (await next_ping(stream, timeout=3)).id == first
        holders = [(url, process) for url, process in setup.apis if sse_streams_of(url) == 1]
        assert len(holders) == 1, "exactly one process holds the stream"
        (_, victim), (survivor_url, _) = holders[0], next(a for a in setup.apis if a[0] != holders[0][0])
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=5)
        # The stream through nginx ends with its upstream.
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError, AssertionError)):
            while True:
                await next_ping(stream, timeout=5)
        stream.close()

        # What the client missed, published through nginx (POSTs land on the survivor).
        missed = [await asyncio.to_thread(ping, setup) for _ in range(5)]
        # Ordinary requests keep working.
        async with httpx.AsyncClient(base_url=setup.url, timeout=10,
                                     headers={"Authorization": f"Bearer {setup.token}"}) as client:
            for _ in range(10):
                assert (await client.get("/v1/me")).status_code == 200

        resumed = await subscribe(setup, last_event_id=first)
        try:
            last = await asyncio.to_thread(ping, setup)
            got: list[str] = []
            while not got or got[-1] != last:
                event = await next_ping(resumed, timeout=5)
                assert event.id is not None
                got.append(event.id)
            assert got == [*missed, last]  # every missed event, once, in order
            assert sse_streams_of(survivor_url) == 1
        finally:
            resumed.close()

    asyncio.run(run())
