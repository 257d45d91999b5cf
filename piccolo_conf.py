"""Piccolo's configuration: the engine comes from `DATABASE_URL` (SQLite in `./var` by default)."""

import os

from piccolo.conf.apps import AppRegistry

from app.db.engine import engine_from_url

DB = engine_from_url(os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.abspath(
    os.path.join(os.environ.get("DATA_DIR") or "./var", "bookwire.sqlite3")
))

APP_REGISTRY = AppRegistry(apps=["app.db.piccolo_app"])
