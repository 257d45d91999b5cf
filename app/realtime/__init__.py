"""Real-time delivery: the event bus, the in-process hub, SSE and long-poll."""
