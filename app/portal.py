"""The portal: `/` leads to `/app`; `/app`, `/app/...` and `/bookings/<id>` (the link every email
carries) serve one page shell, rendered with Jinja2, that loads the portal's ES modules from
`/assets/` (served from the package: no CDN, works offline). The portal's views run in the browser,
on `/client/bookwire.js` and the JSON API (docs/decisions.md, "Portal")."""

import uuid
from pathlib import Path

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect, Template
from litestar.router import Router
from litestar.static_files import create_static_files_router

from app.validation import BROWSER_PAGE

TEMPLATES = Path(__file__).parent / "templates"
_ASSETS = Path(__file__).parent / "static" / "portal"

# The shell runs only the portal's own scripts and styles, talks only to its own origin, and may not
# be framed: a message body or a resource name that slipped past escaping still could not run.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _shell() -> Template:
    return Template(template_name="portal.html", headers=PAGE_HEADERS)


@get("/", include_in_schema=False, sync_to_thread=False)
def home() -> Redirect:
    """`/` leads to the portal."""
    return Redirect("/app", status_code=302)


@get(["/app", "/app/{view:path}"], include_in_schema=False, sync_to_thread=False, opt={BROWSER_PAGE: True})
def portal_page() -> Template:
    """The portal's shell; the view is chosen in the browser from the path."""
    return _shell()


@get("/bookings/{booking_id:uuid}", include_in_schema=False, sync_to_thread=False, opt={BROWSER_PAGE: True})
def booking_page(booking_id: uuid.UUID) -> Template:
    """A booking's page: the shell, which shows the booking once the visitor has signed in."""
    return _shell()


# no-cache: a browser revalidates (cheaply, by ETag), so a deploy's new portal shows at the next load.
assets: Router = create_static_files_router(path="/assets", directories=[_ASSETS], name="assets",
                                            cache_control=CacheControlHeader(no_cache=True))
