"""Email: queueing deliveries, admin templates and their sandboxed rendering, sending, and the delivery log."""
