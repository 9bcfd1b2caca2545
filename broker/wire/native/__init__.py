"""The native Wharf protocol: one Connection per socket and its frame handlers."""
