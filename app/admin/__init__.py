"""Admin-only endpoints that are not about one area's objects: announcements and presence."""
