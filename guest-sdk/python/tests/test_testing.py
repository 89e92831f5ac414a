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


if __name__ == "__main__":
    unittest.main()
