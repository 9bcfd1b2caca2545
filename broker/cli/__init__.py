"""The ``wharf`` command line: serve, ctl (the management API client), config."""
