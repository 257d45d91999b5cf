"""The ASGI application: `create_app(settings)`, and `app` for uvicorn."""

from __future__ import annotations

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp

from app.accounts.controllers import AuthController, MeController, UserController
from app.accounts.throttle import auth_rate_limit
from app.admin.controllers import AdminController
from app.api_docs.ui import docs_plugins
from app.bookings.controllers import BookingController
from app.client_files import client_file
from app.conversations.controllers import ConversationController, MessageController
from app.db.engine import bind_engine, engine_from_url
from app.email.controllers import EmailAdminController
from app.errors import EXCEPTION_HANDLERS
from app.health import HealthController
from app.lifespan import lifespan
from app.live_page import live_page
from app.metrics import Metrics, MetricsController
from app.notifications.controllers import NotificationController
from app.observe import observe
from app.pools.controllers import PoolController
from app.portal import TEMPLATES, assets, booking_page, home, portal_page
from app.realtime.controllers import EventController
from app.realtime.stream import with_event_stream
from app.resources.controllers import ResourceController
from app.security import TokenCodec
from app.settings import Settings, load_settings
from app.validation import validate_request
from app.webhooks.controllers import WebhookController

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the API for `settings` (read from the environment when not given)."""
    settings = settings or load_settings()
    engine = engine_from_url(settings.database_url)
    bind_engine(engine)
    return Litestar(
        route_handlers=[
            HealthController, MetricsController, AuthController, MeController, UserController, ResourceController,
            BookingController, NotificationController, EventController, AdminController, home, live_page,
            EmailAdminController, MessageController, ConversationController, PoolController, client_file,
            portal_page, booking_page, assets, WebhookController,
        ],
        lifespan=[lifespan(settings, engine)],
        state=State({"settings": settings, "tokens": TokenCodec(settings), "metrics": Metrics()}),
        middleware=[auth_rate_limit],
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=validate_request,
        request_max_body_size=MAX_BODY_BYTES,
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins), allow_credentials=False)
        if settings.cors_origins else None,
        openapi_config=OpenAPIConfig(
            title="Bookwire", version="1", path="/schema", use_handler_docstrings=True, render_plugins=docs_plugins(),
        ),
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        debug=False,
        logging_config=None,  # app/logs.py configures logging for every library (Litestar's would replace it)
    )


def create_asgi(app: Litestar) -> ASGIApp:
    """What the server runs: the Litestar app, with the event stream served beside its router, both
    behind the request ids, access log and HTTP metrics of `observe`."""
    return observe(with_event_stream(app), app.state.metrics)


def __getattr__(name: str) -> ASGIApp:
    # `uvicorn app.asgi:app` builds the app on first access, so importing this module has no side effects.
    if name == "app":
        application = create_asgi(create_app())
        globals()["app"] = application
        return application
    raise AttributeError(name)
