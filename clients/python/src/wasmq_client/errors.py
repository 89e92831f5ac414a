"""Exceptions of the client: every API error carries the API's ``kind``.

The server answers a failure with ``{"error": {"kind", "message"}}``; the
exception class is picked by that kind (``NotFound`` for ``not-found``,
``IllegalTransition`` for ``illegal-transition``, ...), and by the HTTP
status for a kind this version does not know, so a newer server's new kinds
still land in the right family (``BadRequest``, ``Conflict``, ...).
"""

from __future__ import annotations

from typing import Any


class WasmqError(Exception):
    """Base class of everything this package raises."""


class TransportError(WasmqError):
    """The server could not be reached, or the connection broke."""


class WaitTimeout(WasmqError):
    """:meth:`Client.wait` gave up before the task finished."""

    def __init__(self, task_id: str, timeout: float, state: str) -> None:
        super().__init__(f"task {task_id} is still {state} after {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout
        self.state = state


class ApiError(WasmqError):
    """An error answer of the API: ``status``, ``kind`` and ``message`` as
    the server sent them; ``error_id`` names an internal error's entry in
    the server log."""

    def __init__(
        self, status: int, kind: str, message: str, error_id: str | None = None
    ) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message
        self.error_id = error_id


class BadRequest(ApiError):
    """400: the request was refused as it is."""


class InvalidInput(BadRequest):
    """400 ``invalid-input``: the task's input is not acceptable JSON."""


class InvalidModule(BadRequest):
    """400 ``invalid-module``: the bytes are not a task component."""


class AboveMaximum(BadRequest):
    """400 ``above-maximum``: a limit above what the operator allows."""


class Unauthorized(ApiError):
    """401: no bearer token was sent."""


class Forbidden(ApiError):
    """403: a wrong token, or a request the server treats as cross-origin."""


class NotFound(ApiError):
    """404: no such task, module or route."""


class Conflict(ApiError):
    """409: the request conflicts with the current state."""


class IllegalTransition(Conflict):
    """409 ``illegal-transition``: e.g. cancelling a finished task."""


class ModuleInUse(Conflict):
    """409 ``module-in-use``: queued or running tasks use the module."""


class TooLarge(ApiError):
    """413: the body is above the server's limit."""


class Unavailable(ApiError):
    """503: the server cannot serve the request now (e.g. no database)."""


class InternalError(ApiError):
    """500: the details are in the server log, under ``error_id``."""


_BY_KIND: dict[str, type[ApiError]] = {
    "invalid-input": InvalidInput,
    "invalid-module": InvalidModule,
    "above-maximum": AboveMaximum,
    "illegal-transition": IllegalTransition,
    "module-in-use": ModuleInUse,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    500: InternalError,
    503: Unavailable,
}


def api_error(status: int, body: Any, fallback_text: str = "") -> ApiError:
    """The exception for an error answer (``body`` is its decoded JSON, or
    ``None`` when it was not JSON, e.g. from a proxy)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = str(error.get("kind", "unknown"))
        message = str(error.get("message", ""))
        error_id = error.get("id")
    else:
        kind, message, error_id = "unknown", fallback_text.strip()[:500], None
    cls = _BY_KIND.get(kind) or _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else ApiError
    return cls(status, kind, message, error_id)
