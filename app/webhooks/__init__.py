"""Webhooks: integrators' endpoints that receive events over HTTP, signed as the Standard Webhooks
specification says, fed from the outbox (docs/decisions.md, "Webhooks")."""
