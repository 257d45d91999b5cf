"""The in-app inbox: notifications persisted per user, each announced as `notification.created`."""
