"""Bookable resources, their seats over time (capacity arithmetic, occupancy) and availability."""
