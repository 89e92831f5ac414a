"""Python client of wasmq's HTTP API (``wasmq serve``), and a Django 6 Tasks
backend in :mod:`wasmq_client.django`.

    from wasmq_client import Client

    with Client("http://127.0.0.1:8080", token_file="/run/secrets/wasmq") as c:
        c.push_module("hello", "hello.wasm")
        task = c.wait(c.enqueue("hello", {"name": "Ada"}).id, timeout=30)
        print(task.state, task.result)
"""

from .client import (
    FINISHED_STATES,
    Attempt,
    CancelResult,
    Client,
    Enqueued,
    Module,
    Task,
    TaskPage,
)
from .errors import (
    AboveMaximum,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    IllegalTransition,
    InternalError,
    InvalidInput,
    InvalidModule,
    ModuleInUse,
    NotFound,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    WasmqError,
)

__all__ = [
    "FINISHED_STATES",
    "AboveMaximum",
    "ApiError",
    "Attempt",
    "BadRequest",
    "CancelResult",
    "Client",
    "Conflict",
    "Enqueued",
    "Forbidden",
    "IllegalTransition",
    "InternalError",
    "InvalidInput",
    "InvalidModule",
    "Module",
    "ModuleInUse",
    "NotFound",
    "Task",
    "TaskPage",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WasmqError",
]
