"""Reserved for later issues (see docs/architecture.md)."""
