"""The `bookwire` command: `up` (everything, embedded defaults), `api`, `worker`, `scheduler`,
`migrate` and `create-admin`. Each production part runs as its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import logging
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("bookwire")

def _without_password(url: str) -> str:
    """`url` fit to print: a password in it is replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def migrate(settings: Settings) -> None:
    """Apply Piccolo migrations to `DATABASE_URL`, and say in one line what was done."""
    # Piccolo's migration runner finds its engine through piccolo_conf, which reads DATABASE_URL;
    # the tables are bound to that same engine, so one engine (one connection check) serves both.
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ.setdefault("PICCOLO_CONF", "piccolo_conf")
    from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
    from piccolo.apps.migrations.tables import Migration
    from piccolo.engine.finder import engine_finder

    from app.db.engine import bind_engine, close_engine, open_engine

    async def run() -> None:
        engine = engine_finder()
        assert engine is not None, "piccolo_conf defines DB"
        bind_engine(engine)
        await open_engine(engine)
        try:
            manager = ForwardsMigrationManager(app_name="bookwire")
            await manager.create_migration_table()
            before = set(await Migration.get_migrations_which_ran(app_name="bookwire"))
            # Piccolo prints a running commentary ("3 migrations already complete" on a fresh
            # database, among others): keep it for a failure, and say one true thing otherwise.
            with contextlib.redirect_stdout(io.StringIO()) as commentary:
                result = await manager.run()
            if not result.success:
                sys.stderr.write(commentary.getvalue())
                raise SystemExit(f"bookwire: migrations failed: {result.message}")
            applied = len(set(await Migration.get_migrations_which_ran(app_name="bookwire")) - before)
        finally:
            await close_engine(engine)
        where = _without_password(settings.database_url)
        if applied:
            print(f"Database {where}: applied {applied} migration{'s' if applied != 1 else ''}", flush=True)
        else:
            print(f"Database {where}: up to date", flush=True)

    asyncio.run(run())


def create_admin(settings: Settings, email: str, password: str) -> None:
    from app.accounts.services import ensure_admin
    from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine
    from app.errors import AppError

    async def run() -> None:
        engine = engine_from_url(settings.database_url)
        bind_engine(engine)
        await open_engine(engine)
        try:
            user = await ensure_admin(email, password)
            print(f"admin {user.email} ({user.id}) is ready")
        except AppError as refusal:  # an account someone registered, or not an address
            raise SystemExit(f"bookwire: {refusal.detail}") from None
        finally:
            await close_engine(engine)

    asyncio.run(run())


def api(settings: Settings) -> None:
    import uvicorn

    from app.asgi import create_app, create_asgi
    from app.server import http_protocol

    app = create_app(settings)

    class StreamClosingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, first tell every open stream `stream.closing: shutdown`, so clients
        reconnect elsewhere at once instead of waiting for the graceful-shutdown timeout."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            hub = getattr(app.state, "hub", None)
            loop = getattr(self, "_loop", None)
            if hub is not None and loop is not None:
                loop.call_soon_threadsafe(hub.close_all, "shutdown")
            super().handle_exit(sig, frame)

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    limit = settings.max_request_header_bytes
    # log_config=None: uvicorn's loggers keep the root handler of app/logs.py; access_log=False: the
    # access log is app/observe.py's (uvicorn's writes the query string, stream tokens included).
    config = uvicorn.Config(create_asgi(app), host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, access_log=False,
                            proxy_headers=True, server_header=False, timeout_graceful_shutdown=5,
                            http=http_protocol(limit), h11_max_incomplete_event_size=limit)
    StreamClosingServer(config).run()


def worker(settings: Settings) -> None:
    """An RQ worker (workers/commands.py)."""
    from workers import commands  # the CLI is the composition root: the one module of app that may

    commands.worker(settings)


def scheduler(settings: Settings) -> None:
    """rq-scheduler and the periodic jobs (workers/commands.py)."""
    from workers import commands

    commands.scheduler(settings)


def webhooks(settings: Settings) -> None:
    """The webhook dispatcher (workers/webhooks.py)."""
    from workers import webhooks as dispatcher

    dispatcher.dispatcher(settings)


def service_token(settings: Settings, scope: str, name: str, days: int) -> str:
    """A service token (a JWT signed with the configured key) for `name` with `scope`; ValueError
    for an unknown scope, a bad name or a life outside 1 to 366 days."""
    from app.security import SERVICE_SCOPES, TokenCodec

    scopes = [s.strip() for s in scope.split(",") if s.strip()]
    unknown = sorted(set(scopes) - SERVICE_SCOPES)
    if not scopes or unknown:
        raise ValueError(f"--scope takes {', '.join(sorted(SERVICE_SCOPES))} (not {', '.join(unknown) or 'nothing'})")
    if not name or len(name) > 100 or not name.isprintable():
        raise ValueError("--name must be 1 to 100 printable characters")
    if not 1 <= days <= 366:
        raise ValueError("--days must be 1 to 366")
    return TokenCodec(settings).service_token(name, " ".join(scopes), days * 86400)


def _local_url(settings: Settings) -> str:
    """Where this machine reaches the API (a wildcard listen address is not one to open)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def up(settings: Settings) -> None:
    """Everything on one machine: embedded Redis if needed, migrations, worker, scheduler, API."""
    from app.embedded_redis import EmbeddedRedis

    embedded = None
    env = dict(os.environ, DATA_DIR=str(settings.data_dir), DATABASE_URL=settings.database_url,
               LOG_FORMAT=settings.log_format or "text")  # its worker and scheduler log for a person too
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        env["REDIS_URL"] = embedded.start()
        if settings.jwt_secret:  # the children see REDIS_URL, so they must be handed the dev secret
            env["JWT_SECRET"] = settings.jwt_secret
        settings = load_settings(env)
        print(f"Started a private Redis at {settings.redis_url} (AOF in {settings.data_dir / 'redis'})")
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        migrate(settings)
        for part in ("worker", "scheduler"):
            children.append(subprocess.Popen([sys.executable, "-m", "app.cli", part], env=env))
        base = _local_url(settings)
        print(f"Bookwire:        {base}  (the JSON API is under /v1)\n"
              f"Portal:          {base}/app  (sign in or register)\n"
              f"API docs (UI):   {base}/schema\n"
              f"OpenAPI JSON:    {base}/schema/openapi.json\n"
              f"Client demo:     {base}/live  (open it as /live#token=<access token>)\n"
              f"Health:          {base}/health\n"
              f"Readiness:       {base}/ready", flush=True)
        api(settings)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bookwire", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run everything locally (embedded Redis when REDIS_URL is unset)")
    commands.add_parser("api", help="serve the HTTP API")
    commands.add_parser("worker", help="run an RQ worker")
    commands.add_parser("scheduler", help="run the rq-scheduler")
    commands.add_parser("webhooks", help="run a webhook dispatcher (each worker starts one by itself)")
    token = commands.add_parser("service-token", help="print a service token for an integrator")
    token.add_argument("--scope", required=True, help="comma-separated: events:publish, webhooks:manage")
    token.add_argument("--name", required=True, help="who the token is for (its `sub`)")
    token.add_argument("--days", type=int, default=365, help="how long it is valid (1 to 366 days)")
    commands.add_parser("migrate", help="apply database migrations")
    admin = commands.add_parser("create-admin", help="create an admin, or reset an existing one")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="prompted for when left out")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"bookwire: configuration error: {exc}", file=sys.stderr)
        return 2
    from app.logs import configure_logging

    # JSON for the processes a deployment runs (a log collector reads them), text for a person.
    default_format = "json" if args.command in ("api", "worker", "scheduler", "webhooks") else "text"
    configure_logging(settings.log_level, settings.log_format or default_format)
    if args.command == "create-admin":
        password = args.password or getpass.getpass("Password: ")
        if not 8 <= len(password) <= 1024:
            print("bookwire: the password must have 8 to 1024 characters", file=sys.stderr)
            return 2
        create_admin(settings, args.email, password)
    elif args.command == "service-token":
        try:
            print(service_token(settings, args.scope, args.name, args.days))
        except ValueError as exc:
            print(f"bookwire: {exc}", file=sys.stderr)
            return 2
    else:
        {"up": up, "api": api, "worker": worker, "scheduler": scheduler, "migrate": migrate,
         "webhooks": webhooks}[args.command](settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
