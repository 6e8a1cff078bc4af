"""One error hierarchy. The web layer turns a MooseError into `{"error", "details"}` with its status."""

from __future__ import annotations


class MooseError(Exception):
    """An error a user can cause; `status` is the HTTP status it maps to."""

    status = 400
    error = "Bad request"

    def __init__(self, details: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(details)
        self.details = details
        if error is not None:
            self.error = error
        if status is not None:
            self.status = status


class InvalidRequest(MooseError):
    status = 400
    error = "Invalid request"


class NotFound(MooseError):
    status = 404
    error = "Not found"


class Conflict(MooseError):
    status = 409
    error = "Conflict"


class PayloadTooLarge(MooseError):
    status = 413
    error = "Payload too large"


class TooManyRequests(MooseError):
    status = 429
    error = "Too many requests"

    def __init__(self, details: str, retry_after_s: int) -> None:
        super().__init__(details)
        self.retry_after_s = retry_after_s


class Unavailable(MooseError):
    """The daemon cannot do what was asked right now (store failing, shutting down)."""

    status = 503
    error = "Service unavailable"


class ConfigError(Exception):
    """Invalid configuration or project: the daemon refuses to start with this one-line reason."""


class DefinitionError(ConfigError):
    """A workflow definition is invalid (duplicate name, bad timeout, ...)."""


class StoreError(Exception):
    """The SQLite store could not do what was asked."""


class StoreClosed(StoreError):
    """The store was closed (the daemon is stopping): retrying is pointless."""
