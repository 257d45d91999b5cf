"""Conversations between a booking's customer and owner: messages, receipts, typing."""
