"""Write wasmq tasks in Python.

A wasmq task is a WebAssembly component that implements the ``task`` world of
the ``wasmq:task@0.1.1`` WIT package (``wit/task.wit``): the host hands it its
input as JSON text and gets JSON text back, or a ``task-error`` that says
whether retrying could help. This module hides that plumbing. You write one
function over plain JSON values and mark it with :func:`task`::

    from wasmq import TaskError, task

    @task
    def run(ctx, input):
        name = input.get("name") if isinstance(input, dict) else None
        if not isinstance(name, str):
            raise TaskError.invalid_input("`name` must be a string")
        ctx.log_info(f"greeting {name} (attempt {ctx.attempt})")
        return {"greeting": f"Hello, {name}!"}

and build it with componentize-py (see guest-sdk/python/README.md)::

    componentize-py -d wit -w task componentize app -p . -p guest-sdk/python -o app.wasm

What the SDK does for you:

- **Input**: the JSON text is parsed with :func:`json.loads` and handed to
  your function (a dict for an object, a list, a str, ...).
- **Output**: your return value is serialised with :func:`json.dumps`, compact
  (``{"a":1}``, like serde_json and ``JSON.stringify``) and without escaping
  non-ASCII text. A value that is not JSON (a set, NaN, ...) fails the task as
  ``permanent``.
- **Errors**: raise :class:`TaskError` (``TaskError.permanent(...)``,
  ``.retryable(...)``, ``.invalid_input(...)``) to choose the kind; the
  host's retry policy keys on it. **Any other exception** becomes a
  ``permanent`` task error whose message is Python's own
  (``"ZeroDivisionError: division by zero"``) and whose details carry the
  exception type and traceback as JSON; the traceback also goes to stderr,
  which the host keeps with the attempt. It is not a trap: an uncaught Python
  exception is a normal failure of the task, and a trap would lose the message
  into a backtrace of the interpreter. Mark it ``retryable`` yourself if
  retrying can help.
- **Host services**: the :class:`Context` gives the task's id, attempt
  number, queue and deadline, sends log lines and progress to the host, and
  tells whether cancellation was requested.
- **Grants**: :meth:`Context.config` reads the config values and secrets the
  operator granted the task's module (build with ``-w granted-task``), and
  :mod:`wasmq.http` makes outbound HTTP requests to the URLs granted to it
  (build with ``-w http-task``); see ``wit/granted.wit``.
- **Subtasks**: :meth:`Context.spawn`, :meth:`Context.spawn_many`,
  :meth:`Context.wait` and :meth:`Context.map` fan work out to child tasks
  and collect their results. A wait whose results are not there yet ends the
  run, and the task runs again *from the start* once they are: everything a
  task does before a wait must be deterministic (see :meth:`Context.spawn`).

A plain function whose input is ``{"args": [...], "kwargs": {...}}`` (what
the Django backend of the ``wasmq-client`` package sends) is exported with
:func:`function_task` instead, in the component's entry module::

    from shop.tasks import divide
    from wasmq import function_task

    WitWorld = function_task(divide)      # runs divide(*args, **kwargs)
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional

try:
    from componentize_py_types import Err
    from wit_world.imports import host, subtasks
except ModuleNotFoundError as _e:
    # Natively (a unit test under wasmq.testing) there are no generated
    # bindings: stand-ins with the same shapes, and no host behind them.
    if (_e.name or "").split(".")[0] not in ("componentize_py_types", "wit_world"):
        raise
    from ._native import Err, host, subtasks, wit

    _config_store: Any = None
    _NATIVE = True
else:
    _NATIVE = False
    try:
        from wit_world.imports import types as wit
    except ImportError:
        # World http-task also imports wasi:http's `types`: componentize-py
        # then names both interfaces after their packages.
        from wit_world.imports import wasmq_task_types as wit
    try:
        # Only in the worlds granted-task and http-task (wit/granted.wit).
        from wit_world.imports import store as _config_store
    except ImportError:
        _config_store = None

__all__ = ["Child", "Context", "LogLevel", "TaskError", "function_task", "task"]

LogLevel = wit.LogLevel
"""Severity of a log line: ``LogLevel.TRACE``, ``DEBUG``, ``INFO``, ``WARN``, ``ERROR``."""

Child = subtasks.Child
"""A spawned child task: ``child.id`` (its task id, a UUID, the same on every
run of the parent) and ``child.seq`` (the number of its spawn in the run,
from 0). Hand it back to :meth:`Context.wait`."""


class TaskError(Exception):
    """A task failure: a kind that drives the retry policy, a message, and
    optional machine-readable details (any JSON-serialisable value).

    ``kind`` is one of ``"permanent"`` (do not retry), ``"retryable"`` (retry
    with backoff while attempts remain) or ``"invalid-input"`` (the input is
    wrong; not retried).
    """

    KINDS = {
        "permanent": wit.ErrorKind.PERMANENT,
        "retryable": wit.ErrorKind.RETRYABLE,
        "invalid-input": wit.ErrorKind.INVALID_INPUT,
    }

    def __init__(self, kind: str, message: str, details: Any = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown task error kind {kind!r}: expected one of {sorted(self.KINDS)}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details

    @classmethod
    def permanent(cls, message: str, details: Any = None) -> "TaskError":
        """The task will fail the same way again; the host does not retry."""
        return cls("permanent", message, details)

    @classmethod
    def retryable(cls, message: str, details: Any = None) -> "TaskError":
        """A transient failure; the host retries while attempts remain."""
        return cls("retryable", message, details)

    @classmethod
    def invalid_input(cls, message: str, details: Any = None) -> "TaskError":
        """The input is wrong; the host does not retry."""
        return cls("invalid-input", message, details)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"TaskError({self.kind!r}, {self.message!r}, {self.details!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskError):
            return NotImplemented
        return (self.kind, self.message, self.details) == (other.kind, other.message, other.details)

    __hash__ = Exception.__hash__

    @classmethod
    def _from_wit(cls, e: wit.TaskError) -> "TaskError":
        # The host's error (a spawn refused, a child's failure). Details are
        # JSON text by convention: parsed back into a value, or kept as the
        # string they are when they are not JSON.
        details = e.details
        if details is not None:
            try:
                details = json.loads(details)
            except ValueError:
                pass
        return cls(_KIND_NAMES[e.kind], e.message, details)

    def _to_wit(self) -> wit.TaskError:
        details = None
        if self.details is not None:
            try:
                details = _dumps(self.details)
            except (TypeError, ValueError) as e:
                # Never lose the error itself over its details.
                details = _dumps(f"details could not be serialized: {e}")
        return wit.TaskError(kind=self.KINDS[self.kind], message=self.message, details=details)


class Context:
    """The running attempt's view of the host: who it is, and a channel for
    logs, progress and cancellation.

    The task's identity is fetched from the host on first use only, so a task
    that never asks pays nothing for it.
    """

    def __init__(self) -> None:
        self._info: Optional[wit.TaskContext] = None
        # Set by wasmq.testing: what would go to the host is recorded there.
        self._recorder: Any = None

    def _native(self) -> None:
        # Outside a component (a native test) there is no host to spawn on.
        if self._recorder is not None:
            raise TaskError.permanent(
                "subtasks need the wasmq host: they cannot run natively (test the parent's logic "
                "around them, and each child's task on its own)"
            )

    def _get(self) -> wit.TaskContext:
        if self._info is None:
            self._info = host.context()
        return self._info

    @property
    def task_id(self) -> str:
        """The task's id: a UUID for queued tasks, ``local`` under ``wasmq run``."""
        return self._get().task_id

    @property
    def attempt(self) -> int:
        """This attempt's number, starting at 1."""
        return self._get().attempt

    @property
    def max_attempts(self) -> int:
        """How many attempts the task gets in total."""
        return self._get().max_attempts

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now will not be retried."""
        return self.attempt >= self.max_attempts

    @property
    def queue(self) -> str:
        """The queue the task was taken from."""
        return self._get().queue

    @property
    def deadline_unix_ms(self) -> Optional[int]:
        """This attempt's wall-clock deadline, milliseconds since the Unix epoch."""
        return self._get().deadline_unix_ms

    def time_remaining(self) -> Optional[float]:
        """Seconds left until the deadline: ``None`` without one, 0 once passed."""
        deadline = self.deadline_unix_ms
        if deadline is None:
            return None
        return max(0.0, deadline / 1000 - time.time())

    def log(self, level: "wit.LogLevel | str", message: str) -> None:
        """Writes a log line, stored with the attempt. ``level`` is a
        :data:`LogLevel` or its name (``"info"``)."""
        if isinstance(level, str):
            level = LogLevel[level.upper()]
        if self._recorder is not None:
            self._recorder.log(level, str(message))
            return
        host.log(level, str(message))

    def log_debug(self, message: str) -> None:
        self.log(LogLevel.DEBUG, message)

    def log_info(self, message: str) -> None:
        self.log(LogLevel.INFO, message)

    def log_warn(self, message: str) -> None:
        self.log(LogLevel.WARN, message)

    def log_error(self, message: str) -> None:
        self.log(LogLevel.ERROR, message)

    def progress(self, percent: int, message: str = "") -> None:
        """Reports progress; ``percent`` is clamped to 0..100."""
        percent = max(0, min(100, int(percent)))
        if self._recorder is not None:
            self._recorder.progress(percent, str(message))
            return
        host.progress(percent, str(message))

    def is_cancelled(self) -> bool:
        """True once cancellation was requested. A long-running task that
        checks this now and then can stop cleanly instead of being killed."""
        if self._recorder is not None:
            return self._recorder.is_cancelled()
        return host.is_cancelled()

    def config(self, key: str) -> Optional[str]:
        """The config value or granted secret ``key`` of this task's module,
        read through ``wasi:config/store``; ``None`` when nothing of that name
        is set or granted. The operator sets values with ``wasmq module config
        NAME KEY=VALUE`` and grants secrets with ``wasmq secret set KEY`` and
        ``wasmq module grant NAME --secret KEY``; a secret wins over a config
        value of the same name. The host takes granted secrets back out of the
        task's output, logs and errors, but a task should not print them.

        The component must be built with the world ``granted-task`` (or
        ``http-task``): ``componentize-py -d wit -w granted-task ...``. Built
        with ``task``, which has no ``wasi:config``, this raises a
        ``permanent`` :class:`TaskError` saying so.
        """
        if not isinstance(key, str):
            raise TypeError(f"config key must be a str, not {type(key).__name__}")
        if self._recorder is not None:
            return self._recorder.config(key)
        if _config_store is None:
            raise TaskError.permanent(_NO_CONFIG)
        try:
            return _config_store.get(key)
        except Err as e:
            # store.error: upstream(message) or io(message).
            why = getattr(e.value, "value", e.value)
            raise TaskError.retryable(f"reading config key {key!r}: {why}") from None

    # Subtasks.

    def spawn(self, module: str, input: Any, **options: Any) -> "Child":
        """Spawns a child task running ``module`` (``"name"`` or
        ``"name@version"``) on the JSON value ``input``, and returns its
        :data:`Child`. Results come from :meth:`wait`.

        ``options`` are any of ``queue`` (str), ``priority`` (-100..100),
        ``max_attempts``, ``fuel`` (0: unlimited), ``memory_bytes`` and
        ``timeout_ms``; each one left out is inherited from this task.

        Raises :class:`TaskError` when the host refuses the spawn (limits above
        the worker's, too many children, nesting too deep); left uncaught, it
        fails this task with the host's error.

        **Determinism.** Children are durable: when this task is retried, or
        runs again after a wait, each spawn returns the child it made the first
        time, matched by the order of the calls. So everything before a wait
        must do the same thing on every run: the same spawns, in the same
        order, with the same modules, inputs and options (no clock, no
        randomness, nothing read from outside in them). A spawn that differs
        from the first run's fails the task as ``permanent``
        (``non-deterministic``).
        """
        self._native()
        return _call(subtasks.spawn, str(module), _input(input), _options(options))

    def spawn_many(self, module: str, inputs: Iterable[Any], **options: Any) -> List["Child"]:
        """Spawns one child per JSON value of ``inputs``, in order, with the
        same ``options`` as :meth:`spawn`; returns their :data:`Child` list."""
        self._native()
        texts = [_input(value, i) for i, value in enumerate(inputs)]
        return _call(subtasks.spawn_many, str(module), texts, _options(options))

    def wait(self, children: Iterable["Child"]) -> List[Any]:
        """The results of ``children``, in the order given, once all of them
        are done: for each child, its output as a JSON value, or a
        :class:`TaskError` *instance* (returned, not raised) when it failed,
        ran out of fuel or memory, trapped, timed out or was cancelled; its
        message starts with the outcome (``"failed: ..."``). Tell them apart
        with ``isinstance(result, TaskError)``; ``raise`` one to fail with it.

        When a result is not there yet, the run ends inside this call (the
        host stops the instance; no Python code runs after it, not even
        ``finally`` blocks or ``except`` clauses) and the task runs again from
        the start once the children are done: see :meth:`spawn` on
        determinism.
        """
        self._native()
        children = list(children)
        for c in children:
            if not isinstance(c, Child):
                raise TypeError(f"wait() takes the children spawn() returned, not {type(c).__name__}")
        return [_result(r) for r in subtasks.wait(children)]

    def map(self, module: str, inputs: Iterable[Any], max_running: Optional[int] = None, **options: Any) -> List[Any]:
        """Runs ``module`` on each JSON value of ``inputs`` as child tasks
        (``options`` as for :meth:`spawn`) and returns their outputs, in
        order, as JSON values: :meth:`spawn_many` and :meth:`wait` in one
        call. With ``max_running``, at most that many of these children are
        unfinished at once.

        Raises the first failed child's error (in the order of ``inputs``) as
        a :class:`TaskError` of the same kind and message; use
        :meth:`spawn_many` and :meth:`wait` to see every result. Like
        :meth:`wait`, it may end the run and resume it from the start.
        """
        self._native()
        texts = [_input(value, i) for i, value in enumerate(inputs)]
        if max_running is not None:
            max_running = _int("max_running", max_running, 0, _U32)
        results = _call(subtasks.map, str(module), texts, _options(options), max_running)
        values = [_result(r) for r in results]
        for value in values:
            if isinstance(value, TaskError):
                raise value
        return values


_KIND_NAMES = {wit_kind: name for name, wit_kind in TaskError.KINDS.items()}

_NO_CONFIG = (
    "ctx.config() needs wasi:config/store, which this component does not import: build it with "
    "the world granted-task (or http-task, for wasmq.http) instead of task: "
    "componentize-py -d wit -w granted-task componentize ..."
)

_U32 = 2**32 - 1
_U64 = 2**64 - 1

# spawn-options: each field's Python type and range (its WIT type's; the host
# checks the limits).
_OPTIONS = {
    "queue": None,
    "priority": (-(2**15), 2**15 - 1),
    "max_attempts": (0, _U32),
    "fuel": (0, _U64),
    "memory_bytes": (0, _U64),
    "timeout_ms": (0, _U64),
}


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, not {value}")
    return value


def _options(options: Dict[str, Any]) -> "subtasks.SpawnOptions":
    fields: Dict[str, Any] = {}
    for name, value in options.items():
        if name not in _OPTIONS:
            raise TypeError(f"unknown spawn option {name!r}: expected one of {', '.join(_OPTIONS)}")
        if value is None:
            pass
        elif _OPTIONS[name] is None:
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        else:
            value = _int(name, value, *_OPTIONS[name])
        fields[name] = value
    return subtasks.SpawnOptions(**{name: fields.get(name) for name in _OPTIONS})


def _input(value: Any, index: Optional[int] = None) -> str:
    # A child's input, serialised like a task's output.
    try:
        return _dumps(value)
    except (TypeError, ValueError) as e:
        which = "subtask input" if index is None else f"subtask input {index}"
        raise TaskError.permanent(f"{which} could not be serialized: {e}") from None


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    # An import returning result<_, task-error>: its error as a TaskError.
    try:
        return fn(*args)
    except Err as e:
        raise TaskError._from_wit(e.value) from None


def _result(r: Any) -> Any:
    # One child's result<string, task-error>: the output parsed, or the error.
    if isinstance(r, Err):
        return TaskError._from_wit(r.value)
    try:
        return json.loads(r.value)
    except ValueError as e:
        return TaskError.permanent(f"subtask output is not JSON: {e}")


def _dumps(value: Any) -> str:
    # Compact and UTF-8 like serde_json and JSON.stringify, so the same task in
    # any language produces the same text. NaN and Infinity are not JSON.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _uncaught(e: Exception) -> TaskError:
    trace = "".join(traceback.format_exception(e))
    print(trace, file=sys.stderr, end="")
    message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return TaskError.permanent(message, {"exception": type(e).__qualname__, "traceback": trace})


def _run_json(fn: Callable[[Context, Any], Any], ctx: Context, text: str) -> str:
    # What the exported run does, with its errors as TaskErrors: also what
    # wasmq.testing.TestContext.run_json runs natively.
    try:
        value = json.loads(text)
    except ValueError as e:
        raise TaskError.invalid_input(f"invalid input: {e}") from None
    try:
        output = fn(ctx, value)
    except TaskError:
        raise
    except Exception as e:
        raise _uncaught(e) from None
    try:
        return _dumps(output)
    except (TypeError, ValueError) as e:
        raise TaskError.permanent(f"task output could not be serialized: {e}") from None


def _run(fn: Callable[[Context, Any], Any], text: str) -> str:
    try:
        return _run_json(fn, Context(), text)
    except TaskError as e:
        raise Err(e._to_wit())


def task(fn: Callable[[Context, Any], Any]) -> Callable[[Context, Any], Any]:
    """Exports ``fn(ctx, input)`` as the task's ``run``.

    componentize-py looks for a class named ``WitWorld`` in the app module;
    the decorator defines it there, so use it once per app, in the module you
    name on componentize-py's command line. ``fn`` itself is returned
    unchanged, so it can still be called (and unit-tested) directly.
    """

    class WitWorld:
        def run(self, input: str) -> str:
            return _run(fn, input)

    module = sys.modules[fn.__module__]
    if getattr(module, "WitWorld", None) is not None:
        raise RuntimeError(f"module {fn.__module__} already exports a task (use @task once)")
    module.WitWorld = WitWorld
    return fn


def _call_with_arguments(fn: Callable[..., Any]) -> Callable[[Context, Any], Any]:
    # Imported here, which is still at build time (function_task runs when
    # the app module loads, before the snapshot), so that components of
    # @task functions do not carry inspect and what it imports.
    import inspect

    signature = inspect.signature(fn)

    def call(ctx: Context, input: Any) -> Any:
        if not isinstance(input, dict) or not set(input) <= {"args", "kwargs"}:
            raise TaskError.invalid_input('the input must be {"args": [...], "kwargs": {...}}')
        args = input.get("args", [])
        kwargs = input.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TaskError.invalid_input("`args` must be a list and `kwargs` an object")
        # A mismatch is the caller's mistake, not the function's: checking it
        # before the call keeps a TypeError raised inside the function a
        # failure of the function.
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TaskError.invalid_input(f"{fn.__name__}(): {e}")
        return fn(*args, **kwargs)

    return call


def function_task(fn: Callable[..., Any]) -> type:
    """The ``WitWorld`` of a task that calls the plain function
    ``fn(*args, **kwargs)`` with its input ``{"args": [...], "kwargs": {...}}``
    (either key may be left out) and returns what it returns.

    Assign the result to ``WitWorld`` in the module componentize-py builds
    (``WitWorld = function_task(divide)``): ``fn`` can then live in a module
    that knows nothing of wasmq, such as a Django app's ``tasks.py``. Input of
    another shape, or arguments that do not fit ``fn``'s signature, fail the
    task as ``invalid-input``; errors raised by ``fn`` are handled as with
    :func:`task`.
    """
    call = _call_with_arguments(fn)

    class WitWorld:
        def run(self, input: str) -> str:
            return _run(call, input)

    return WitWorld
