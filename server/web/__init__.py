"""The tornado application: routing, error bodies, static files, the OpenAPI document."""
