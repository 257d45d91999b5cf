"""Reminders before confirmed bookings, and response deadlines of pending ones."""
