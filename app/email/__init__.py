"""Email on booking changes: which emails a change sends, admin templates, and the delivery log."""
