"""Bookwire: a real-time booking and notification backend."""
