"""`GET /live`: a thin demo of the browser client (`/client/bookwire.js`) that lists the signed-in
user's events as they arrive; the access token goes in the URL fragment (`/live#token=...`), which
browsers never send to a server. The product's pages are the portal (`app/portal.py`)."""

from functools import cache
from pathlib import Path

from litestar import MediaType, get

_PAGE = Path(__file__).parent / "static" / "live.html"


@cache
def _page() -> str:
    return _PAGE.read_text()


@get("/live", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def live_page() -> str:
    """The live events demo page."""
    return _page()
