"""Wire adapters: one sub-package per way in (native: the Wharf protocol)."""
