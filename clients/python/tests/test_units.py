"""The parts that need no server: request bodies, error mapping, and how a
failed attempt becomes Django's TaskError."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from wasmq_client import errors
from wasmq_client.client import enqueue_body, parse_time


def test_enqueue_body_sends_only_what_is_set():
    assert enqueue_body("hello") == {"module": "hello"}
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert enqueue_body(
        "hello@2", {"a": 1}, queue="q", priority=-3, run_after=at, max_attempts=1,
        unique_key="k", fuel="unlimited", memory_bytes=1 << 20, timeout_ms=10,
    ) == {
        "module": "hello@2", "input": {"a": 1}, "queue": "q", "priority": -3,
        "run_after": "2030-01-02T01:04:05+00:00", "max_attempts": 1, "unique_key": "k",
        "fuel": "unlimited", "memory_bytes": 1 << 20, "timeout_ms": 10,
    }
    assert enqueue_body("hello", delay=1.5)["delay_ms"] == 1500
    assert enqueue_body("hello", delay=timedelta(minutes=1))["delay_ms"] == 60_000
    # A falsy input is still sent: only None means the server's default.
    assert enqueue_body("hello", 0)["input"] == 0
    for bad in ({"delay": -1}, {"run_after": datetime(2030, 1, 1)}, {"delay": 1, "run_after": at}):
        with pytest.raises(ValueError):
            enqueue_body("hello", **bad)


def test_parse_time_keeps_microseconds_of_nanosecond_text():
    t = parse_time("2026-12-01T10:00:00.123456789Z")
    assert t == datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_time(None) is None


@pytest.mark.parametrize(
    "status,kind,cls",
    [
        (400, "invalid-module", errors.InvalidModule),
        (400, "bad-request", errors.BadRequest),
        (400, "some-new-kind", errors.BadRequest),
        (401, "unauthorized", errors.Unauthorized),
        (404, "not-found", errors.NotFound),
        (409, "illegal-transition", errors.IllegalTransition),
        (409, "module-in-use", errors.ModuleInUse),
        (413, "too-large", errors.TooLarge),
        (418, "teapot", errors.BadRequest),
        (500, "internal", errors.InternalError),
        (502, "unknown", errors.ApiError),
    ],
)
def test_api_errors_carry_the_kind(status, kind, cls):
    e = errors.api_error(status, {"error": {"kind": kind, "message": "m", "id": "abc"}})
    assert type(e) is cls and (e.status, e.kind, e.message, e.error_id) == (status, kind, "m", "abc")


def test_an_answer_that_is_not_json_is_still_an_api_error():
    e = errors.api_error(502, None, "<html>Bad gateway</html>")
    assert e.kind == "unknown" and "Bad gateway" in e.message


def test_a_python_traceback_becomes_the_exception_and_its_traceback():
    pytest.importorskip("django")
    from wasmq_client.django import _error

    trace = (
        "Traceback (most recent call last):\n"
        '  File "shop/tasks.py", line 3, in f\n'
        "shop.errors.OutOfStock: tea\n"
    )
    logs = "[    1ms INFO ] hi\n--- stdout ---\nx\n--- stderr ---\n" + trace
    e = _error("task-error", "OutOfStock: tea", logs)
    assert (e.exception_class_path, e.traceback) == ("shop.errors.OutOfStock", trace)
    e = _error("task-error", "KeyError: 'x'", "--- stderr ---\nTraceback (most recent call last):\nKeyError: 'x'")
    assert e.exception_class_path == "builtins.KeyError"
    e = _error("out-of-fuel", "fuel exhausted after 10 units", None)
    assert e.exception_class_path == "wasmq_client.outcomes.OutOfFuel"
    assert e.traceback == "out-of-fuel: fuel exhausted after 10 units\n"
    e = _error("task-error", "permanent: no", "[    1ms INFO ] a log line\n")
    assert e.exception_class_path == "wasmq_client.outcomes.TaskError" and "a log line" in e.traceback
    assert _error("brand-new", "m", None).exception_class_path == "wasmq_client.outcomes.TaskFailed"


def test_an_unknown_enqueue_option_is_refused():
    with pytest.raises(TypeError, match="colour"):
        enqueue_body("hello", colour="red")
