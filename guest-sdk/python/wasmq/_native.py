"""Stand-ins for the bindings componentize-py generates from the WIT
(``componentize_py_types`` and ``wit_world``), used only outside a component:
a native unit test under :mod:`wasmq.testing`. They have the bindings'
shapes; there is no host behind them, so calling it is an error.
"""

import enum
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional


@dataclass(frozen=True)
class Err(Exception):
    value: Any


class ErrorKind(enum.Enum):
    PERMANENT = 0
    RETRYABLE = 1
    INVALID_INPUT = 2


class LogLevel(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


@dataclass
class TaskError:
    kind: ErrorKind
    message: str
    details: Optional[str]


@dataclass
class TaskContext:
    task_id: str
    attempt: int
    max_attempts: int
    queue: str
    deadline_unix_ms: Optional[int]


@dataclass
class SpawnOptions:
    queue: Optional[str]
    priority: Optional[int]
    max_attempts: Optional[int]
    fuel: Optional[int]
    memory_bytes: Optional[int]
    timeout_ms: Optional[int]


@dataclass
class Child:
    id: str
    seq: int


def _no_host(*_args: Any) -> Any:
    raise RuntimeError(
        "no wasmq host: outside a component, run the task with wasmq.testing.TestContext"
    )


wit = SimpleNamespace(ErrorKind=ErrorKind, LogLevel=LogLevel, TaskError=TaskError, TaskContext=TaskContext)
host = SimpleNamespace(context=_no_host, log=_no_host, progress=_no_host, is_cancelled=_no_host)
subtasks = SimpleNamespace(
    SpawnOptions=SpawnOptions,
    Child=Child,
    spawn=_no_host,
    spawn_many=_no_host,
    wait=_no_host,
    map=_no_host,
)
