"""The message store: segment files, group commit, recovery, durable definitions."""
