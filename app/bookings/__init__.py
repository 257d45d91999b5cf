"""Bookings: the status machine, the capacity guarantee, history and availability."""
