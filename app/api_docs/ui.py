"""What `/schema` serves: the completed OpenAPI document, the AsyncAPI document, and Swagger UI
from files in the package (`app/static/docs/`, swagger-ui-dist, Apache-2.0), so the docs work
offline. Litestar's own plugins load the UI from a CDN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Router
from litestar.enums import MediaType
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from app.api_docs.asyncapi import asyncapi_document
from app.api_docs.openapi import complete_openapi

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSETS_URL = "/schema/assets"  # the plugins' router is mounted at OpenAPIConfig.path, "/schema"


class CompletedDocument:
    """The completed OpenAPI document, made once from the one Litestar generated (it never changes)."""

    def __init__(self) -> None:
        self._document: dict[str, Any] | None = None

    def __call__(self, request: Request, generated: dict[str, Any]) -> dict[str, Any]:
        if self._document is None:
            self._document = complete_openapi(generated, request.app)
        return self._document


class OpenAPIJson(JsonRenderPlugin):
    """`/schema/openapi.json`: the completed document."""

    def __init__(self, document: CompletedDocument) -> None:
        super().__init__()
        self.document = document

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return self.render_json(request, self.document(request, openapi_schema))


class AsyncAPIJson(OpenAPIRenderPlugin):
    """`/schema/asyncapi.json`: the event catalogue."""

    def __init__(self) -> None:
        super().__init__(path="/asyncapi.json", media_type=MediaType.JSON)

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return msgspec.json.encode(asyncapi_document())


class OfflineSwagger(SwaggerRenderPlugin):
    """Swagger UI (`/schema`, `/schema/swagger`) from the package's own copy, showing the completed document."""

    def __init__(self, document: CompletedDocument) -> None:
        super().__init__(
            path=["/", "/swagger"], js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_URL}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_URL}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_URL}/favicon-32x32.png'>",
        )
        self.document = document

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self.document(request, openapi_schema))

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(create_static_files_router(path="/assets", directories=[ASSETS], name="docs-assets"))


def docs_plugins() -> list[OpenAPIRenderPlugin]:
    """The render plugins of `OpenAPIConfig`, sharing one completed document."""
    document = CompletedDocument()
    return [OfflineSwagger(document), OpenAPIJson(document), AsyncAPIJson()]
