"""wasmq.testing: a task function run natively, as the component would run
it, with what it sent to the host recorded. Imported here without the
bindings' stand-ins test_wasmq.py installs, as a task's own tests import it.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _import_native():
    # Import wasmq as a project's tests do, with no bindings around, and leave
    # sys.modules as it was (test_wasmq.py imports it over its stand-ins).
    def take(pred):
        return {k: sys.modules.pop(k) for k in list(sys.modules) if pred(k.split(".")[0])}

    saved = take(lambda top: top in ("wasmq", "wit_world", "componentize_py_types"))
    try:
        import wasmq
        import wasmq.testing

        return wasmq, wasmq.testing
    finally:
        take(lambda top: top == "wasmq")
        sys.modules.update(saved)


wasmq, testing = _import_native()
TaskError, LogLevel = wasmq.TaskError, wasmq.LogLevel
TestContext, LogLine, Progress = testing.TestContext, testing.LogLine, testing.Progress
http = testing._http  # wasmq.http, as testing imported it


def work(ctx, input):
    done = 0
    for i in range(input["items"]):
        if ctx.is_cancelled():
            raise TaskError.permanent(f"cancelled after {done}")
        done += 1
        ctx.progress(100 * (i + 1) // input["items"], f"item {i}")
    ctx.log("warn", "done")
    return {
        "done": done,
        "attempt": ctx.attempt,
        "task": ctx.task_id,
        "queue": ctx.queue,
        "last": ctx.is_last_attempt,
    }


@wasmq.task
def flaky(ctx, n):
    if ctx.attempt < 2:
        raise TaskError.retryable("the first attempt always fails")
    ctx.progress(50, "halfway")
    ctx.log_info(f"doubling {n}")
    return n * 2


class TestContextTest(unittest.TestCase):
    def test_imports_natively_without_the_bindings(self):
        self.assertEqual(wasmq.host.__class__.__name__, "SimpleNamespace")
        with self.assertRaisesRegex(RuntimeError, "no wasmq host"):
            wasmq.Context().attempt

    def test_records_logs_progress_and_identity(self):
        run = TestContext(task_id="t-1", queue="reports", attempt=3, max_attempts=3).run(work, {"items": 2})
        self.assertEqual(
            run.output(), {"done": 2, "attempt": 3, "task": "t-1", "queue": "reports", "last": True}
        )
        self.assertEqual(run.progress, [Progress(50, "item 0"), Progress(100, "item 1")])
        self.assertEqual(run.logs, [LogLine(LogLevel.WARN, "done")])
        self.assertEqual(run.cancel_checks, 2)

    def test_defaults(self):
        out = TestContext().run(work, {"items": 0}).output()
        self.assertEqual((out["task"], out["attempt"], out["queue"], out["last"]), ("test", 1, "default", False))

    def test_cancellation_after_some_checks(self):
        run = TestContext(cancelled_after=1).run(work, {"items": 5})
        self.assertEqual(run.error(), TaskError.permanent("cancelled after 1"))
        self.assertEqual(run.cancel_checks, 2)
        self.assertEqual(run.progress, [Progress(20, "item 0")])
        self.assertEqual(TestContext(cancelled_after=0).run(work, {"items": 5}).error().message, "cancelled after 0")

    def test_the_attempt_decides_and_the_decorated_function_runs(self):
        self.assertEqual(TestContext().run(flaky, 21).error().kind, "retryable")
        second = TestContext(attempt=2).run(flaky, 21)
        self.assertEqual(second.output(), 42)
        self.assertEqual(second.logs[0].message, "doubling 21")
        self.assertEqual(second.logs[0].level, LogLevel.INFO)
        self.assertEqual(second.progress[0].percent, 50)

    def test_run_json_goes_through_the_component_path(self):
        self.assertEqual(TestContext(attempt=2).run_json(flaky, "21").output(), "42")
        self.assertEqual(TestContext(attempt=2).run_json(flaky, "nope").error().kind, "invalid-input")
        # Any other exception is a permanent error, as the component reports it.
        failed = TestContext(attempt=2).run_json(flaky, '{}')
        self.assertEqual(failed.error().kind, "permanent")
        self.assertIn("TypeError", failed.error().message)
        # An output with no JSON form.
        bad = TestContext().run_json(lambda ctx, _: {1, 2}, "null")
        self.assertIn("could not be serialized", bad.error().message)

    def test_progress_is_clamped(self):
        run = TestContext().run(lambda ctx, _: [ctx.progress(150, "over"), ctx.progress(-3)], None)
        self.assertEqual(run.progress, [Progress(100, "over"), Progress(0, "")])

    def test_timeout_sets_a_deadline(self):
        self.assertIsNone(TestContext().run(lambda ctx, _: ctx.time_remaining(), None).output())
        left = TestContext(timeout=30).run(lambda ctx, _: ctx.time_remaining(), None).output()
        self.assertTrue(25 < left <= 30, left)

    def test_subtasks_cannot_run_natively(self):
        for call in (
            lambda ctx: ctx.spawn("child", 1),
            lambda ctx: ctx.spawn_many("child", [1]),
            lambda ctx: ctx.wait([]),
            lambda ctx: ctx.map("child", [1]),
        ):
            err = TestContext().run(lambda ctx, _: call(ctx), None).error()
            self.assertEqual(err.kind, "permanent")
            self.assertIn("cannot run natively", err.message)

    def test_output_and_error_assert(self):
        with self.assertRaisesRegex(AssertionError, "the task failed: retryable"):
            TestContext().run(flaky, 1).output()
        with self.assertRaisesRegex(AssertionError, "the task succeeded"):
            TestContext(attempt=2).run(flaky, 1).error()


def fetch(ctx, input):
    token = ctx.config("api-token")
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    r = http.get(input["url"], headers=headers, max_bytes=input.get("max_bytes", http.DEFAULT_MAX_BYTES))
    if not r.ok:
        raise TaskError.permanent(f"status {r.status}")
    return {"status": r.status, "json": r.json(), "type": r.headers.get("content-type")}


class GrantsTest(unittest.TestCase):
    def test_config_comes_from_the_test_context(self):
        read = lambda ctx, key: ctx.config(key)  # noqa: E731
        ctx = TestContext(config={"api-token": "t0k3n"})
        self.assertEqual(ctx.run(read, "api-token").output(), "t0k3n")
        self.assertIsNone(ctx.run(read, "other").output())
        self.assertIsNone(TestContext().run(read, "api-token").output())
        with self.assertRaises(TypeError):
            TestContext(config={"n": 1})

    def test_config_outside_a_test_context_has_no_host(self):
        # Natively there is no wasi:config: the error says how to build.
        with self.assertRaises(TaskError) as caught:
            wasmq.Context().config("k")
        self.assertIn("granted-task", caught.exception.message)

    def test_http_requests_go_to_the_test_and_are_recorded(self):
        def answer(request):
            self.assertEqual(request.header("Authorization"), "Bearer t0k3n")
            if request.url.endswith("/missing"):
                return http.Response(404, body="no")
            return http.Response(200, [("Content-Type", "application/json")], b'{"id": 7}')

        ctx = TestContext(config={"api-token": "t0k3n"}, http=answer)
        run = ctx.run(fetch, {"url": "https://api.example.com/items"})
        self.assertEqual(run.output(), {"status": 200, "json": {"id": 7}, "type": "application/json"})
        [request] = run.requests
        self.assertEqual((request.method, request.url, request.body), ("GET", "https://api.example.com/items", None))
        self.assertEqual(request.headers, (("authorization", "Bearer t0k3n"),))
        self.assertEqual(ctx.run(fetch, {"url": "https://api.example.com/missing"}).error().message, "status 404")
        # The bound applies to the test's answer too.
        err = ctx.run(fetch, {"url": "https://api.example.com/items", "max_bytes": 3}).error()
        self.assertEqual((err.kind, type(err).__name__), ("permanent", "HttpError"))
        # The handler's own errors reach the task, e.g. a refusal.
        refused = http.HttpError("permanent", "GET x: wasmq: x is not granted to this run", "internal-error")
        run = TestContext(http=lambda r: (_ for _ in ()).throw(refused)).run_json(fetch, '{"url": "x"}')
        self.assertEqual(run.error(), refused)

    def test_without_a_handler_there_is_no_network(self):
        run = TestContext().run(fetch, {"url": "https://example.com/"})
        self.assertEqual(run.error().kind, "permanent")
        self.assertIn("no network in a unit test", run.error().message)
        self.assertEqual([r.url for r in run.requests], ["https://example.com/"])
        # Outside any TestContext, and after one: no handler is left behind.
        self.assertIsNone(http._handler)
        with self.assertRaises(TaskError) as caught:
            http.get("https://example.com/")
        self.assertIn("outside a component", caught.exception.message)
        with self.assertRaises(ZeroDivisionError):
            TestContext(http=lambda r: 1 / 0).run(fetch, {"url": "https://example.com/"})
        self.assertIsNone(http._handler)
        with self.assertRaises(TypeError):
            TestContext(http=lambda r: "not a response").run(fetch, {"url": "https://example.com/"})


if __name__ == "__main__":
    unittest.main()
