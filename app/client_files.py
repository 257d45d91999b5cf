"""`GET /client/bookwire.js` and `/client/bookwire.d.ts`: the browser client, as an ES module and
its TypeScript declarations, served from the package (no build step, no CDN)."""

from functools import cache
from pathlib import Path

from litestar import Response, get

from app.errors import NotFound

_DIR = Path(__file__).parent / "static" / "client"
_MEDIA_TYPES = {"bookwire.js": "text/javascript; charset=utf-8",
                "bookwire.d.ts": "application/typescript; charset=utf-8"}


@cache
def _file(name: str) -> bytes:
    return (_DIR / name).read_bytes()


@get("/client/{name:str}", include_in_schema=False, sync_to_thread=False)
def client_file(name: str) -> Response[bytes]:
    """One of the client's two files; anything else is 404."""
    if name not in _MEDIA_TYPES:
        raise NotFound("No such client file: there are bookwire.js and bookwire.d.ts.")
    # no-cache: a browser revalidates, so a deploy's new client is picked up at the next page load.
    return Response(_file(name), media_type=_MEDIA_TYPES[name], headers={"Cache-Control": "no-cache"})
