"""Users: registration, tokens, and admin management of accounts."""
