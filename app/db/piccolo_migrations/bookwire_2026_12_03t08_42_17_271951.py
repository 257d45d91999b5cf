from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-03T08:42:17:271951"
VERSION = "1.38.0"
DESCRIPTION = "email_deliveries.next_attempt_at: no attempt before a failed one's retry is due"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="bookwire", description=DESCRIPTION
    )

    manager.add_column(
        table_class_name="EmailDelivery",
        tablename="email_deliveries",
        column_name="next_attempt_at",
        db_column_name="next_attempt_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
