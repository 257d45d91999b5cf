"""Bookable resources and their availability."""
