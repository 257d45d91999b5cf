"""`GET /live`: a small page that follows the signed-in user's events in the browser; and `GET /`,
which leads a browser to the API docs.

It shows how a browser should use the stream: trade the access token for a stream token, open an
`EventSource`, let it reconnect by itself (it sends `Last-Event-ID`), and after `stream.closing` or
a refused reconnect, open a new one with a fresh stream token and `?last_event_id=`.
"""

from functools import cache
from pathlib import Path

from litestar import MediaType, get

_PAGE = Path(__file__).parent / "static" / "live.html"


@cache
def _page() -> str:
    return _PAGE.read_text()


@get("/live", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def live_page() -> str:
    """The live events page (the access token goes in the URL fragment: `/live#token=...`)."""
    return _page()
