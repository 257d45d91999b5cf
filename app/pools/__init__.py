"""Pools: interchangeable resources of several providers, booked as one."""
