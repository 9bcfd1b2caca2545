"""Queue policies: argument validation, dead-lettering, TTL, length limits, delivery limits."""
