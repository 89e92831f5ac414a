"""Unit tests of the wasmq Python SDK, run natively by CPython (no host, no
WebAssembly): stand-ins for the modules componentize-py generates from the
WIT (``componentize_py_types`` and ``wit_world``) record what the SDK hands
the host and give back what the test scripts.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import importlib.util
import json
import sys
import types
import unittest
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, List, Optional, TypeVar

# The stand-ins, shaped like componentize-py 0.25's bindings: a record is a
# dataclass, an enum an Enum, a result returned by an import is its value or
# a raised `Err`, and a result inside a list is `Ok(value)` or `Err(value)`.
T = TypeVar("T")


@dataclass
class Ok(Generic[T]):
    value: T


@dataclass(frozen=True)
class Err(Exception, Generic[T]):
    value: T


# The records and enums are the SDK's own native stand-ins (wasmq/_native.py,
# what wasmq.testing runs on), loaded by path: importing them as part of the
# package would import wasmq before the stand-ins below are in place.
_spec = importlib.util.spec_from_file_location(
    "_wasmq_native", Path(__file__).resolve().parents[1] / "wasmq" / "_native.py"
)
_native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_native)
ErrorKind, LogLevel, WitTaskError = _native.ErrorKind, _native.LogLevel, _native.TaskError
TaskContext, SpawnOptions, Child = _native.TaskContext, _native.SpawnOptions, _native.Child


class FakeSubtasks(types.ModuleType):
    """`wit_world.imports.subtasks`: records calls, answers from `replies`."""

    SpawnOptions = SpawnOptions
    Child = Child

    def __init__(self) -> None:
        super().__init__("wit_world.imports.subtasks")
        self.reset()

    def reset(self) -> None:
        self.calls: List[tuple] = []
        self.replies: List[Any] = []

    def _answer(self, *call: Any) -> Any:
        self.calls.append(call)
        reply = self.replies.pop(0)
        if isinstance(reply, Err):
            raise reply
        return reply

    def spawn(self, module: str, input: str, options: SpawnOptions) -> Child:
        return self._answer("spawn", module, input, options)

    def spawn_many(self, module: str, inputs: List[str], options: SpawnOptions) -> List[Child]:
        return self._answer("spawn_many", module, inputs, options)

    def wait(self, children: List[Child]) -> list:
        return self._answer("wait", children)

    def map(self, module: str, inputs: List[str], options: SpawnOptions, max_running: Optional[int]) -> list:
        return self._answer("map", module, inputs, options, max_running)


subtasks = FakeSubtasks()
wit = types.ModuleType("wit_world.imports.types")
wit.ErrorKind, wit.LogLevel, wit.TaskError, wit.TaskContext = ErrorKind, LogLevel, WitTaskError, TaskContext
host = types.ModuleType("wit_world.imports.host")
imports = types.ModuleType("wit_world.imports")
imports.host, imports.subtasks, imports.types = host, subtasks, wit
cpt = types.ModuleType("componentize_py_types")
cpt.Ok, cpt.Err = Ok, Err
sys.modules.update(
    {
        "componentize_py_types": cpt,
        "wit_world": types.ModuleType("wit_world"),
        "wit_world.imports": imports,
        "wit_world.imports.host": host,
        "wit_world.imports.subtasks": subtasks,
        "wit_world.imports.types": wit,
    }
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wasmq  # noqa: E402
from wasmq import Context, TaskError  # noqa: E402

INHERIT = SpawnOptions(None, None, None, None, None, None)


def wit_error(kind: ErrorKind, message: str, details: Optional[str] = None) -> WitTaskError:
    return WitTaskError(kind, message, details)


class SubtaskTest(unittest.TestCase):
    def setUp(self) -> None:
        subtasks.reset()
        self.ctx = Context()

    def test_spawn_serialises_the_input_like_an_output_and_inherits_every_option(self):
        subtasks.replies = [Child("c0", 0)]
        child = self.ctx.spawn("add", {"a": 1, "b": "é"})
        self.assertEqual(child, Child("c0", 0))
        self.assertEqual((child.id, child.seq), ("c0", 0))
        self.assertEqual(subtasks.calls, [("spawn", "add", '{"a":1,"b":"é"}', INHERIT)])

    def test_spawn_options_by_keyword(self):
        subtasks.replies = [Child("c0", 0)]
        self.ctx.spawn(
            "add@1.0.0", [1], queue="fast", priority=-5, max_attempts=3, fuel=0, memory_bytes=2**40, timeout_ms=500
        )
        self.assertEqual(subtasks.calls[0][3], SpawnOptions("fast", -5, 3, 0, 2**40, 500))
        subtasks.replies = [Child("c1", 1)]
        self.ctx.spawn("add", None, priority=7, queue=None)
        self.assertEqual(subtasks.calls[1][2:], ("null", SpawnOptions(None, 7, None, None, None, None)))

    def test_bad_options_are_the_callers_mistake_and_reach_no_host(self):
        for options, error in [
            ({"prio": 1}, TypeError),
            ({"priority": "high"}, TypeError),
            ({"priority": True}, TypeError),
            ({"priority": 2**15}, ValueError),
            ({"max_attempts": -1}, ValueError),
            ({"fuel": 2**64}, ValueError),
            ({"timeout_ms": 1.5}, TypeError),
            ({"queue": 3}, TypeError),
        ]:
            with self.subTest(options=options), self.assertRaises(error):
                self.ctx.spawn("add", {}, **options)
        with self.assertRaises(ValueError):
            self.ctx.map("add", [], max_running=-1)
        self.assertEqual(subtasks.calls, [])

    def test_an_input_that_is_not_json_fails_permanently_before_any_spawn(self):
        with self.assertRaises(TaskError) as e:
            self.ctx.spawn_many("add", [{"a": 1}, {"a": float("nan")}])
        self.assertEqual(e.exception.kind, "permanent")
        self.assertTrue(e.exception.message.startswith("subtask input 1 could not be serialized"), e.exception)
        with self.assertRaises(TaskError):
            self.ctx.spawn("add", {1, 2})
        self.assertEqual(subtasks.calls, [])

    def test_a_refused_spawn_raises_the_hosts_error(self):
        subtasks.replies = [Err(wit_error(ErrorKind.PERMANENT, "too many children", '{"max":10}'))]
        with self.assertRaises(TaskError) as e:
            self.ctx.spawn_many("add", [1, 2], fuel=5)
        self.assertEqual(e.exception, TaskError.permanent("too many children", {"max": 10}))
        self.assertEqual(subtasks.calls, [("spawn_many", "add", ["1", "2"], SpawnOptions(None, None, None, 5, None, None))])

    def test_wait_returns_outputs_and_errors_in_order(self):
        children = [Child("a", 0), Child("b", 1), Child("c", 2), Child("d", 3)]
        subtasks.replies = [
            [
                Ok('{"sum":2}'),
                Err(wit_error(ErrorKind.RETRYABLE, "failed: upstream 503", '{"status":503}')),
                Ok("[1,null]"),
                Err(wit_error(ErrorKind.PERMANENT, "cancelled: by request", "not json")),
            ]
        ]
        results = self.ctx.wait(iter(children))
        self.assertEqual(subtasks.calls, [("wait", children)])
        self.assertEqual(
            results,
            [
                {"sum": 2},
                TaskError.retryable("failed: upstream 503", {"status": 503}),
                [1, None],
                TaskError.permanent("cancelled: by request", "not json"),
            ],
        )
        self.assertIsInstance(results[1], TaskError)

    def test_wait_takes_children_only(self):
        with self.assertRaises(TypeError):
            self.ctx.wait(["a"])
        self.assertEqual(subtasks.calls, [])

    def test_an_output_that_is_not_json_is_a_permanent_error(self):
        subtasks.replies = [[Ok("{oops")]]
        (result,) = self.ctx.wait([Child("a", 0)])
        self.assertIsInstance(result, TaskError)
        self.assertEqual(result.kind, "permanent")
        self.assertTrue(result.message.startswith("subtask output is not JSON"), result)

    def test_map_returns_outputs_in_order(self):
        subtasks.replies = [[Ok('{"sum":2}'), Ok('{"sum":4}')]]
        out = self.ctx.map("add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}], max_running=1, queue="q")
        self.assertEqual(out, [{"sum": 2}, {"sum": 4}])
        self.assertEqual(
            subtasks.calls,
            [("map", "add", ['{"a":1,"b":1}', '{"a":2,"b":2}'], SpawnOptions("q", None, None, None, None, None), 1)],
        )
        subtasks.replies = [[]]
        self.assertEqual(self.ctx.map("add", []), [])
        self.assertEqual(subtasks.calls[1][4], None)

    def test_map_raises_the_first_failed_childs_error(self):
        subtasks.replies = [
            [
                Ok("1"),
                Err(wit_error(ErrorKind.INVALID_INPUT, "failed: bad a")),
                Err(wit_error(ErrorKind.PERMANENT, "failed: second")),
            ]
        ]
        with self.assertRaises(TaskError) as e:
            self.ctx.map("add", [1, 2, 3])
        self.assertEqual(e.exception, TaskError.invalid_input("failed: bad a"))

    def test_map_raises_the_hosts_error(self):
        subtasks.replies = [Err(wit_error(ErrorKind.PERMANENT, "non-deterministic: spawn 0"))]
        with self.assertRaises(TaskError) as e:
            self.ctx.map("add", [1])
        self.assertEqual(str(e.exception), "permanent: non-deterministic: spawn 0")

    def test_a_childs_error_raised_by_the_task_reaches_the_host_as_it_came(self):
        subtasks.replies = [[Err(wit_error(ErrorKind.RETRYABLE, "failed: x", '{"k":[1,"é"]}'))]]

        @wasmq.task
        def run(ctx, input):
            return ctx.map("add", input)

        with self.assertRaises(Err) as e:
            run.__globals__["WitWorld"]().run("[1]")
        self.assertEqual(e.exception.value, wit_error(ErrorKind.RETRYABLE, "failed: x", '{"k":[1,"é"]}'))
        del run.__globals__["WitWorld"]


if __name__ == "__main__":
    unittest.main()
