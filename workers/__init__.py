"""The worker processes: a thin entry layer over `app` (job entry points, the worker's context, and the
`bookwire worker` / `bookwire scheduler` commands). `app` never imports this package."""
