"""Persistence: Piccolo tables, their migrations, and the engine chosen from `DATABASE_URL`."""
