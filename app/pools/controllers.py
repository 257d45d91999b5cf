"""HTTP endpoints for pools and their availability."""

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.pools import services
from app.pools.schemas import PoolAvailability, PoolCreate, PoolRead, PoolUpdate
from app.security import AuthUser, current_user


class PoolController(Controller):
    path = "/v1/pools"
    tags = ["pools"]
    dependencies = {"user": Provide(current_user)}

    @post("/", operation_id="createPool", status_code=201)
    async def create_pool(self, user: AuthUser, data: PoolCreate) -> PoolRead:
        """Create a pool (admins)."""
        return await services.create_pool(user, data)

    @get("/", operation_id="listPools")
    async def list_pools(
        self, user: AuthUser, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[PoolRead]:
        """Pools the caller may see (active ones; admins all)."""
        items, next_cursor = await services.list_pools(user, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{pool_id:uuid}", operation_id="getPool")
    async def get_pool(self, user: AuthUser, pool_id: uuid.UUID) -> PoolRead:
        """One pool."""
        return await services.get_pool(user, pool_id)

    @patch("/{pool_id:uuid}", operation_id="updatePool")
    async def update_pool(self, user: AuthUser, pool_id: uuid.UUID, data: PoolUpdate) -> PoolRead:
        """Change a pool (admins)."""
        return await services.update_pool(user, pool_id, data)

    @delete("/{pool_id:uuid}", operation_id="deletePool")
    async def delete_pool(self, user: AuthUser, pool_id: uuid.UUID) -> None:
        """Delete a pool (admins): 409 while resources are in it."""
        await services.delete_pool(user, pool_id)

    @get("/{pool_id:uuid}/availability", operation_id="getPoolAvailability")
    async def pool_availability(
        self, user: AuthUser, pool_id: uuid.UUID,
        from_: Annotated[datetime, Parameter(query="from")], to: datetime,
    ) -> PoolAvailability:
        """Free seats over time, summed over the pool's active resources."""
        return await services.availability(user, pool_id, from_, to)
