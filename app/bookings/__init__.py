"""Bookings: the status machine, the capacity guarantee, history, and what a change sets in motion
(events, notifications, emails, reminders and the response deadline)."""
