"""Unit tests of a task without a host: run the task function natively with
an input and an attempt of your choosing, and look at what it returned,
logged and reported::

    import unittest
    from wasmq.testing import TestContext
    from app import run

    class RunTest(unittest.TestCase):
        def test_first_attempt_fails(self):
            first = TestContext().run(run, {"n": 21})
            self.assertEqual(first.error().kind, "retryable")

        def test_second_attempt_doubles(self):
            second = TestContext(attempt=2).run(run, {"n": 21})
            self.assertEqual(second.output(), 42)
            self.assertEqual(second.logs[0].message, "doubling 21")
            self.assertEqual(second.progress[0].percent, 50)

        def test_the_input_as_the_host_hands_it_over(self):
            bad = TestContext(attempt=2).run_json(run, "not json")
            self.assertEqual(bad.error().kind, "invalid-input")

``run`` is the function ``@task`` marks (the decorator returns it unchanged).
Subtasks (``ctx.spawn``, ``wait``, ``map``) need the host: under a test
context they raise a ``permanent`` :class:`~wasmq.TaskError`.

What the operator would grant comes from the test context too:
``TestContext(config={"api-token": "t0k3n"})`` gives the values
:meth:`Context.config` returns, and ``TestContext(http=answer)`` sends the
task's :mod:`wasmq.http` requests to ``answer(request)``, which returns a
:class:`wasmq.http.Response` (or raises, e.g. a :class:`wasmq.http.HttpError`)::

    from wasmq.http import Response

    def answer(request):
        assert request.header("authorization") == "Bearer t0k3n"
        return Response(200, {"content-type": "application/json"}, b'{"id": 7}')

    run = TestContext(config={"api-token": "t0k3n"}, http=answer).run(fetch, {"url": "https://api.example.com/"})
    assert run.requests[0].url == "https://api.example.com/"

Without ``http=``, a request raises a ``permanent`` :class:`~wasmq.TaskError`:
unit tests never reach the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Union

from . import Context, LogLevel, TaskError, _run_json
from . import http as _http

__all__ = ["LogLevel", "LogLine", "Progress", "TestContext", "TestRun"]


class LogLine(NamedTuple):
    """One :meth:`Context.log` call: ``(level, message)``."""

    level: Any  # a wasmq.LogLevel
    message: str


class Progress(NamedTuple):
    """One :meth:`Context.progress` call: ``(percent, message)``, percent
    clamped to 0..100 as the host clamps it."""

    percent: int
    message: str


@dataclass
class TestRun:
    """What one run of a task under :class:`TestContext` did."""

    __test__ = False  # not a test case, for pytest

    result: Union[Any, TaskError]
    """What the task returned (for ``run_json``, the JSON text), or the
    :class:`~wasmq.TaskError` it failed with (any other exception as the
    component reports it: ``permanent``, with the exception's message)."""
    logs: List[LogLine] = field(default_factory=list)
    progress: List[Progress] = field(default_factory=list)
    cancel_checks: int = 0
    """How many times it asked :meth:`Context.is_cancelled`."""
    requests: List[_http.Request] = field(default_factory=list)
    """The :mod:`wasmq.http` requests it made, in order."""

    @property
    def ok(self) -> bool:
        return not isinstance(self.result, TaskError)

    def output(self) -> Any:
        """The task's output; raises ``AssertionError`` with its error if it failed."""
        if isinstance(self.result, TaskError):
            raise AssertionError(f"the task failed: {self.result}") from self.result
        return self.result

    def error(self) -> TaskError:
        """The task's error; raises ``AssertionError`` if it succeeded."""
        if not isinstance(self.result, TaskError):
            raise AssertionError("the task succeeded")
        return self.result


class _Info(NamedTuple):
    # Shaped like the host's task-context record.
    task_id: str
    attempt: int
    max_attempts: int
    queue: str
    deadline_unix_ms: Optional[int]


class _Recorder:
    def __init__(self, cancelled_after: Optional[int], config: Dict[str, str]) -> None:
        self.logs: List[LogLine] = []
        self.progress_: List[Progress] = []
        self.cancel_checks = 0
        self.cancelled_after = cancelled_after
        self.config_ = config
        self.requests: List[_http.Request] = []

    def config(self, key: str) -> Optional[str]:
        return self.config_.get(key)

    def log(self, level: Any, message: str) -> None:
        self.logs.append(LogLine(level, message))

    def progress(self, percent: int, message: str) -> None:
        self.progress_.append(Progress(percent, message))

    def is_cancelled(self) -> bool:
        checked = self.cancel_checks
        self.cancel_checks += 1
        return self.cancelled_after is not None and checked >= self.cancelled_after


class TestContext:
    """The attempt a test runs a task as. Defaults: task id ``test``, attempt
    1 of 3, queue ``default``, no deadline, never cancelled.

    ``timeout`` (seconds) sets a deadline that far from the start of each
    run; ``cancelled_after=n`` requests cancellation once the task has
    checked :meth:`Context.is_cancelled` ``n`` times (0: from the start).
    ``config`` maps keys to the values :meth:`Context.config` returns (config
    values and secrets alike; any other key is ``None``); ``http`` answers
    the task's :mod:`wasmq.http` requests: a function of a
    :class:`wasmq.http.Request` that returns a :class:`wasmq.http.Response`.
    """

    __test__ = False  # not a test case, for pytest

    def __init__(
        self,
        attempt: int = 1,
        max_attempts: int = 3,
        task_id: str = "test",
        queue: str = "default",
        timeout: Optional[float] = None,
        cancelled_after: Optional[int] = None,
        config: Optional[Mapping[str, str]] = None,
        http: Optional[Callable[[_http.Request], _http.Response]] = None,
    ) -> None:
        config = dict(config or {})
        for key, value in config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"config must map str to str, not {key!r}: {value!r}")
        self.config = config
        self.http = http
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.task_id = task_id
        self.queue = queue
        self.timeout = timeout
        self.cancelled_after = cancelled_after

    def run(self, task: Callable[[Context, Any], Any], input: Any) -> TestRun:
        """Runs ``task(ctx, input)`` with ``input`` as a Python value. A
        :class:`~wasmq.TaskError` it raises is the run's ``result``; any other
        exception propagates, so the test shows its traceback."""
        return self._record(lambda ctx: task(ctx, input))

    def run_json(self, task: Callable[[Context, Any], Any], input: str) -> TestRun:
        """Runs ``task`` on JSON text, exactly as the exported component does:
        the input is parsed (a failure is an ``invalid-input`` error and the
        task is not called), any exception becomes a ``permanent`` error, and
        the output is serialised to JSON text, the run's ``result``."""
        return self._record(lambda ctx: _run_json(task, ctx, input))

    def _record(self, f: Callable[[Context], Any]) -> TestRun:
        deadline = None
        if self.timeout is not None:
            deadline = int((time.time() + self.timeout) * 1000)
        recorder = _Recorder(self.cancelled_after, self.config)
        ctx = Context()
        ctx._info = _Info(self.task_id, self.attempt, self.max_attempts, self.queue, deadline)
        ctx._recorder = recorder
        answer = self.http

        def handler(request: _http.Request) -> _http.Response:
            recorder.requests.append(request)
            if answer is None:
                raise TaskError.permanent(
                    f"{request.method} {request.url}: no network in a unit test: give "
                    "TestContext(http=...) a function that answers requests"
                )
            return answer(request)

        saved, _http._handler = _http._handler, handler
        try:
            result = f(ctx)
        except TaskError as e:
            result = e
        finally:
            _http._handler = saved
        return TestRun(result, recorder.logs, recorder.progress_, recorder.cancel_checks, recorder.requests)

