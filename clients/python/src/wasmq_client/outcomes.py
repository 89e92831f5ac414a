"""Exception classes named after wasmq's outcome kinds.

A failed attempt has an outcome kind (``task-error``, ``out-of-fuel``,
``timeout``, ...) rather than a Python exception. The Django backend reports
a failure whose guest raised no Python exception (a trap, a limit, an
explicit ``TaskError`` of the guest SDK) as one of these classes, so
``TaskError.exception_class`` resolves to something importable and
catchable. Nothing here imports Django.
"""

from __future__ import annotations


class TaskFailed(Exception):
    """Base class: an attempt that did not succeed (also an outcome kind
    this version does not know)."""


class TaskError(TaskFailed):
    """``task-error``: the task reported an error of its own (``permanent``,
    ``retryable`` or ``invalid-input``) without a Python exception."""


class Trap(TaskFailed):
    """``trap``: the guest trapped (a panic, ``unreachable``, a bad access)."""


class OutOfFuel(TaskFailed):
    """``out-of-fuel``: the run used up its fuel."""


class OutOfMemory(TaskFailed):
    """``out-of-memory``: the run hit its memory limit."""


class Timeout(TaskFailed):
    """``timeout``: the run passed its wall-clock limit."""


class Cancelled(TaskFailed):
    """``cancelled``: cancelled while queued or running."""


class InvalidModule(TaskFailed):
    """``invalid-module``: the component could not be loaded."""


class InvalidOutput(TaskFailed):
    """``invalid-output``: the output was not JSON, or too large."""


class HostError(TaskFailed):
    """``host-error``: the host failed, not the task."""


class LeaseExpired(TaskFailed):
    """``lease-expired``: the worker running it stopped renewing its lease."""


BY_KIND: dict[str, type[TaskFailed]] = {
    "task-error": TaskError,
    "trap": Trap,
    "out-of-fuel": OutOfFuel,
    "out-of-memory": OutOfMemory,
    "timeout": Timeout,
    "cancelled": Cancelled,
    "invalid-module": InvalidModule,
    "invalid-output": InvalidOutput,
    "host-error": HostError,
    "lease-expired": LeaseExpired,
}


def class_path(kind: str | None) -> str:
    """The dotted path of the class for an outcome kind."""
    cls = BY_KIND.get(kind or "", TaskFailed)
    return f"{cls.__module__}.{cls.__qualname__}"
