"""The admin plane: management API, OpenAPI document, metrics, health checks."""
