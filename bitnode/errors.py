"""The one error hierarchy of bitnode, and the one table mapping it to HTTP.

Every subsystem raises these (or subclasses of them). The interface layer turns
any exception into an error envelope with :func:`error_response`; nothing else
decides HTTP codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class BitnodeError(Exception):
    """Base of every error a user may see. ``str(err)`` is the user-facing text."""

    http_code = 500


class BadRequest(BitnodeError):
    """The caller sent something malformed or out of range."""

    http_code = 400


class Unauthorized(BitnodeError):
    """Missing or wrong API secret."""

    http_code = 401


class Forbidden(BitnodeError):
    """Authenticated, but not allowed (foreign origin, someone else's path...)."""

    http_code = 403


class NotFound(BitnodeError):
    """The named thing (method, key, file, service, user...) does not exist."""

    http_code = 404


class MethodNotAllowed(BitnodeError):
    """The path exists but not with this HTTP verb."""

    http_code = 405

    def __init__(self, message: str, allowed: tuple[str, ...] = ()):
        super().__init__(message)
        self.allowed = allowed


class Conflict(BitnodeError):
    """The request clashes with the current state (already exists, dependency off...)."""

    http_code = 409


class TooManyRequests(BitnodeError):
    """Rate limit hit; ``retry_after`` is in seconds."""

    http_code = 429

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class NotImplementedYet(BitnodeError):
    """The API method exists in the spec but its subsystem is not built yet."""

    http_code = 501


class Unavailable(BitnodeError):
    """A needed subsystem or peer is down or not ready; trying later may work."""

    http_code = 503


class InsufficientStorage(BitnodeError):
    """Not enough space (hired or donated) to do what was asked."""

    http_code = 507


class Timeout(Unavailable):
    """A peer or a subsystem did not answer in time."""


@dataclass(frozen=True)
class ErrorResponse:
    """What the interface layer sends back for a failed call."""

    http_code: int
    envelope: dict
    headers: dict


def error_response(exc: BaseException, execution: float | None = None) -> ErrorResponse:
    """Map any exception to an HTTP code, an error envelope and extra headers.

    Unexpected exceptions (not a :class:`BitnodeError`) become a 500 with a
    generic text; the caller is responsible for logging their traceback.
    """
    headers: dict = {}
    if isinstance(exc, BitnodeError):
        code = exc.http_code
        text = str(exc) or exc.__class__.__name__
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(max(1, int(round(exc.retry_after + 0.4999))))
        if isinstance(exc, MethodNotAllowed) and exc.allowed:
            headers["Allow"] = ", ".join(exc.allowed)
    else:
        code = 500
        text = f"internal error: {exc.__class__.__name__}"
    envelope: dict = {"status": "ERROR", "errors": [text]}
    if execution is not None:
        envelope["execution"] = f"{execution:.4f}"
    return ErrorResponse(code, envelope, headers)
