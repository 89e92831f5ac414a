"""A Django 6 Tasks backend that runs each task as a wasmq task.

    TASKS = {
        "default": {
            "BACKEND": "wasmq_client.django.WasmqBackend",
            "QUEUES": ["default", "reports"],
            "OPTIONS": {
                "URL": "http://127.0.0.1:8080",
                "TOKEN_FILE": "/run/secrets/wasmq-token",
                # Task path -> module; default: the function's name.
                "MODULES": {"shop.tasks.order_total": "order_total@3"},
            },
        }
    }

``task.enqueue(*args, **kwargs)`` enqueues a run of the task's module with the
input ``{"args": [...], "kwargs": {...}}``; the component built from the same
function with the guest SDK's ``function_task`` unpacks it. Inside
``transaction.atomic()`` the request is sent when the transaction commits
(nothing at all on a rollback), and the returned result's ``id`` is empty
until then.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import autodiscover_modules

from . import outcomes
from .client import Attempt, Client, enqueue_body
from .client import Task as WasmqTask
from .errors import BadRequest, NotFound

__all__ = ["WasmqBackend"]

_STATUS = {
    "queued": TaskResultStatus.READY,
    # Claimed ahead of a free runner, not started yet.
    "leased": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "succeeded": TaskResultStatus.SUCCESSFUL,
    "failed": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}

# Enqueue options a MODULES entry may set besides the module.
_TASK_OPTIONS = {"max_attempts", "unique_key", "fuel", "memory_bytes", "timeout_ms"}

# Backends are made per thread (django.tasks.task_backends is thread-local):
# the HTTP clients, and the tasks each backend alias has seen, are shared by
# every thread of the process.
_lock = threading.Lock()
_clients: dict[tuple[str, str | None, float, bool], Client] = {}
_registry: dict[str, dict[str, Task]] = {}
_discovered = False


def _shared_client(url: str, token: str | None, timeout: float, coalesce: bool) -> Client:
    key = (url, token, timeout, coalesce)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Client(url, token, timeout=timeout, coalesce=coalesce)
        return client


class WasmqBackend(BaseTaskBackend):
    """``OPTIONS``: ``URL`` (required), ``TOKEN_FILE`` or ``TOKEN``,
    ``MODULES`` (task path -> ``"NAME[@VERSION]"``, or a dict with
    ``module`` and any of ``max_attempts``, ``unique_key``, ``fuel``,
    ``memory_bytes``, ``timeout_ms``), ``DATABASE`` (the alias whose
    transactions delay an enqueue; default ``"default"``), ``TIMEOUT``
    (seconds per HTTP request; default 30), ``COALESCE`` (default true:
    enqueues made at the same moment by several threads share requests,
    see :class:`wasmq_client.Client`)."""

    supports_defer = True
    # The task runs in a WebAssembly component's Python, which has no event loop.
    supports_async_task = False
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        url = options.get("URL")
        if not url:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['URL'] is required")
        token = options.get("TOKEN")
        if options.get("TOKEN_FILE"):
            if token:
                raise ImproperlyConfigured(f"TASKS[{alias!r}]: give TOKEN or TOKEN_FILE, not both")
            with open(options["TOKEN_FILE"]) as f:
                token = f.read().strip()
        self.client = _shared_client(
            url, token, float(options.get("TIMEOUT", 30)), bool(options.get("COALESCE", True))
        )
        self.database = options.get("DATABASE", "default")
        self.modules: dict[str, dict[str, Any]] = {}
        for path, entry in options.get("MODULES", {}).items():
            spec = {"module": entry} if isinstance(entry, str) else dict(entry)
            unknown = set(spec) - _TASK_OPTIONS - {"module"}
            if "module" not in spec or unknown:
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]['OPTIONS']['MODULES'][{path!r}]: a module reference, "
                    f"or a dict with `module` and any of {sorted(_TASK_OPTIONS)}"
                )
            self.modules[path] = spec

    def module_of(self, task: Task) -> str:
        """The module reference (``NAME`` or ``NAME@VERSION``) ``task`` runs as."""
        spec = self.modules.get(task.module_path)
        return spec["module"] if spec else task.name

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if task.takes_context:
            # The function runs in a component, where Django's TaskContext
            # (a TaskResult and its backend) does not exist.
            raise InvalidTask("WasmqBackend does not support takes_context=True.")
        name = self.module_of(task).partition("@")[0]
        with _lock:
            tasks = _registry.setdefault(self.alias, {})
            seen = tasks.setdefault(name, task)
        # get_result finds a task by its module, so two tasks must not share one.
        if seen.module_path != task.module_path:
            raise InvalidTask(
                f"{task.module_path} and {seen.module_path} would both run as wasmq module "
                f"{name!r}: map one of them to another module in OPTIONS['MODULES']"
            )

    # Enqueue

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        return self.enqueue_many(task, [(args, kwargs)])[0]

    def enqueue_many(
        self, task: Task, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult]:
        """Enqueues one run of ``task`` per ``(args, kwargs)``, with one HTTP
        request per 1,000 (``POST /api/v1/tasks/batch``). As with
        :meth:`enqueue`, inside a transaction they are sent on commit."""
        self.validate_task(task)
        results = [self._new_result(task, args, kwargs) for args, kwargs in calls]
        if not results:
            return []
        bodies = [self._body(task, r) for r in results]
        send = lambda: self._send(results, bodies)  # noqa: E731
        if transaction.get_connection(self.database).in_atomic_block:
            # A rolled-back request must not leave a task behind it.
            transaction.on_commit(send, using=self.database)
        else:
            send()
        return results

    def _new_result(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        return TaskResult(
            task=task,
            id="",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def _body(self, task: Task, result: TaskResult) -> dict[str, Any]:
        spec = dict(self.modules.get(task.module_path) or {"module": task.name})
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            run_after = timezone.make_aware(run_after)
        return enqueue_body(
            input={"args": result.args, "kwargs": result.kwargs},
            queue=task.queue_name,
            priority=task.priority,
            run_after=run_after,
            **spec,
        )

    def _send(self, results: list[TaskResult], bodies: list[dict[str, Any]]) -> None:
        sent = self.client.enqueue_bodies(bodies)
        now = timezone.now()
        for result, answer in zip(results, sent, strict=True):
            object.__setattr__(result, "id", answer.id)
            object.__setattr__(result, "enqueued_at", now)
            task_enqueued.send(type(self), task_result=result)

    # Results

    def get_result(self, result_id: str) -> TaskResult:
        try:
            record = self.client.get(result_id)
        except (NotFound, BadRequest) as e:
            # 400: not a task id at all (not a UUID).
            raise TaskResultDoesNotExist(result_id) from e
        task = self._task_of(record)
        attempts = self.client.attempts(record.id) if record.attempt > 0 else []
        input = record.input if isinstance(record.input, dict) else {}
        result = TaskResult(
            task=task,
            id=record.id,
            # A state newer than this module: not finished as far as it knows.
            status=_STATUS.get(record.state, TaskResultStatus.RUNNING),
            enqueued_at=record.enqueued_at,
            started_at=attempts[0].started_at if attempts else None,
            finished_at=record.finished_at,
            last_attempted_at=attempts[-1].started_at if attempts else None,
            args=input.get("args", []),
            kwargs=input.get("kwargs", {}),
            backend=self.alias,
            errors=_errors(record, attempts),
            worker_ids=[a.worker_id for a in attempts],
        )
        if record.state == "succeeded":
            object.__setattr__(result, "_return_value", normalize_json(record.result))
        return result

    def _task_of(self, record: WasmqTask) -> Task:
        global _discovered
        task = _registry.get(self.alias, {}).get(record.module_name)
        if task is None and not _discovered:
            # Tasks register when their module is imported; a process that
            # only reads results may not have imported them yet.
            autodiscover_modules("tasks")
            _discovered = True
            task = _registry.get(self.alias, {}).get(record.module_name)
        if task is None:
            raise TaskResultDoesNotExist(
                f"{record.id} runs wasmq module {record.module_name!r}, which no task of "
                f"backend {self.alias!r} runs as"
            )
        try:
            return task.using(queue_name=record.queue, priority=record.priority)
        except InvalidTask:
            # Enqueued by another client, outside what this backend allows.
            return task


_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _errors(record: WasmqTask, attempts: list[Attempt]) -> list[TaskError]:
    errors = [
        _error(a.outcome, a.error_message, a.logs)
        for a in attempts
        if a.outcome not in (None, "success", "shutdown")
    ]
    if record.state == "cancelled" and not errors:
        # Cancelled before any run: Django has no state for it but FAILED.
        errors.append(_error("cancelled", record.error_message or "cancelled", None))
    return errors


def _error(outcome: str | None, message: str | None, logs: str | None) -> TaskError:
    """A failed attempt as Django's TaskError: a Python exception raised by
    the guest (the SDK writes its traceback to stderr, which the attempt's
    logs keep) with its own class and traceback; any other failure as the
    class of :mod:`wasmq_client.outcomes` for its outcome kind."""
    stderr = (logs or "").rpartition("--- stderr ---\n")[2] if logs else ""
    start = stderr.rfind(_TRACEBACK)
    if outcome == "task-error" and start >= 0:
        traceback = stderr[start:].rstrip() + "\n"
        last = traceback.rstrip().rsplit("\n", 1)[-1]
        m = _EXCEPTION_LINE.match(last)
        if m:
            name = m.group(1)
            # traceback prints builtins' exceptions unqualified.
            path = name if "." in name else f"builtins.{name}"
            return TaskError(exception_class_path=path, traceback=traceback)
    text = f"{outcome}: {message or ''}".rstrip()
    if logs:
        text += "\n" + logs.rstrip()
    return TaskError(exception_class_path=outcomes.class_path(outcome), traceback=text + "\n")

