"""The HTTP client: one :class:`httpx.Client` (keep-alive connection pool)
per :class:`Client`, safe to share between threads."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Literal, TypedDict, Unpack
from urllib.parse import quote

import httpx

from ._coalesce import BATCH_LIMIT, Coalescer
from .errors import TransportError, WaitTimeout, api_error

__all__ = [
    "Attempt",
    "CancelResult",
    "Client",
    "Enqueued",
    "EnqueueOptions",
    "Module",
    "Task",
    "TaskPage",
    "FINISHED_STATES",
]

#: States a task does not leave on its own (``retry`` can requeue the last two).
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})


Fuel = int | Literal["unlimited"]

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _task_path(task_id: str, action: str | None = None) -> str:
    # An id is text from elsewhere (a URL, a form): quoted, it cannot name
    # another route ("../modules").
    path = f"/api/v1/tasks/{quote(str(task_id), safe='')}"
    return f"{path}/{action}" if action else path


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time of the API (nanoseconds, ``Z``) as an aware datetime."""
    if value is None:
        return None
    # datetime keeps microseconds; the server writes up to nanoseconds.
    return datetime.fromisoformat(_FRACTION.sub(r"\1", value))


def _time_text(t: datetime) -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("run_after must be an aware datetime (e.g. with tzinfo=timezone.utc)")
    return t.astimezone(timezone.utc).isoformat()


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The answer to an enqueue: the task's id, and whether an unfinished
    task with the same ``unique_key`` was found instead of a new one."""

    id: str
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the API shows it; ``raw`` holds every field it sent."""

    id: str
    module_name: str
    module_version: str
    queue: str
    priority: int
    state: str
    input: Any
    result: Any
    attempt: int
    max_attempts: int
    error_kind: str | None
    error_message: str | None
    enqueued_at: datetime | None
    run_after: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> Task:
        return cls(
            id=v["id"],
            module_name=v["module_name"],
            module_version=v["module_version"],
            queue=v["queue"],
            priority=v["priority"],
            state=v["state"],
            input=v.get("input"),
            result=v.get("result"),
            attempt=v["attempt"],
            max_attempts=v["max_attempts"],
            error_kind=v.get("error_kind"),
            error_message=v.get("error_message"),
            enqueued_at=parse_time(v.get("enqueued_at")),
            run_after=parse_time(v.get("run_after")),
            started_at=parse_time(v.get("started_at")),
            finished_at=parse_time(v.get("finished_at")),
            raw=v,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task: who ran it, when, and how it ended (``outcome``
    is ``None`` while it runs)."""

    attempt: int
    worker_id: str
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str | None
    error_message: str | None
    logs: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> Attempt:
        return cls(
            attempt=v["attempt"],
            worker_id=v["worker_id"],
            started_at=parse_time(v.get("started_at")),
            finished_at=parse_time(v.get("finished_at")),
            outcome=v.get("outcome"),
            error_message=v.get("error_message"),
            logs=v.get("logs"),
            raw=v,
        )


@dataclass(frozen=True, slots=True)
class Module:
    """A stored module version; ``created`` is false when these bytes were
    already stored under the name."""

    name: str
    version: str
    sha256: str
    created: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class CancelResult:
    """``outcome`` is ``cancelled`` (it was queued) or ``requested`` (its
    worker stops it; ``state`` is still the running state)."""

    id: str
    outcome: str
    state: str


@dataclass(frozen=True, slots=True)
class TaskPage:
    """Tasks newest first; pass ``next_before`` as ``before`` for the next page."""

    tasks: list[Task]
    next_before: int | None


class Client:
    """A client of ``wasmq serve``'s API at ``url``.

    ``token`` is the bearer token (or read it from ``token_file``, as
    ``--api-token-file`` does). Every call reuses the connections of one
    pool, so a process should keep one client rather than make one per call;
    it is thread-safe. Close it with :meth:`close` or a ``with`` block.

    With ``coalesce`` (the default), :meth:`enqueue` calls made at the same
    moment from several threads share requests (``POST /api/v1/tasks/batch``)
    while each still gets its own id or error; one thread's calls are sent
    one by one as ever.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 64,
        coalesce: bool = True,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = Path(token_file).read_text().strip()
        headers = {"accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token.strip()}"
        self.url = url.rstrip("/")
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, limits=limits
        )
        self._coalescer = (
            Coalescer(self._enqueue_one, self._enqueue_batch, senders=4) if coalesce else None
        )

    def close(self) -> None:
        if self._coalescer is not None:
            self._coalescer.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise TransportError(f"{method} {self.url}{path}: {e}") from e
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = None
        raise api_error(response.status_code, body, response.text)

    # Modules

    def push_module(
        self,
        name: str,
        wasm: bytes | str | os.PathLike[str] | IO[bytes],
        *,
        version: str | None = None,
    ) -> Module:
        """Uploads a built component (its bytes, a path to it, or an open
        binary file) as ``name`` (``version``: default the next integer).
        Pushing the same bytes again is not an error (``created`` is false)."""
        if isinstance(wasm, (str, os.PathLike)):
            wasm = Path(wasm).read_bytes()
        params = {"name": name}
        if version is not None:
            params["version"] = version
        v = self._request(
            "POST",
            "/api/v1/modules",
            params=params,
            content=wasm,
            headers={"content-type": "application/wasm"},
        )
        return Module(v["name"], v["version"], v["sha256"], bool(v.get("created")), v)

    # Enqueue

    def enqueue(self, module: str, input: Any = None, **options: Unpack[EnqueueOptions]) -> Enqueued:
        """Enqueues a run of ``module`` (``NAME`` or ``NAME@VERSION``) with
        ``input`` (any JSON value; ``{}`` when ``None``) and the options of
        :class:`EnqueueOptions`; those left out take the server's defaults."""
        body = enqueue_body(module, input, **options)
        return self.enqueue_bodies([body])[0]

    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Enqueues many tasks with one request per 1,000 (``POST
        /api/v1/tasks/batch``); each item takes :meth:`enqueue`'s arguments
        by name (``{"module": "hello", "input": {...}, "priority": 5}``).
        Answers in the order given. A batch with an invalid item is refused
        whole (:class:`BadRequest` naming ``tasks[i]``); batches sent before
        it stay enqueued."""
        return self.enqueue_bodies([enqueue_body(**item) for item in tasks])

    def enqueue_bodies(self, bodies: Sequence[Mapping[str, Any]]) -> list[Enqueued]:
        """Sends ready-made request bodies (:func:`enqueue_body`): one with
        ``POST /api/v1/tasks``, more with ``POST /api/v1/tasks/batch`` per
        1,000."""
        if len(bodies) == 1:
            if self._coalescer is not None:
                return [self._coalescer.submit(bodies[0])]
            return [self._enqueue_one(bodies[0])]
        out: list[Enqueued] = []
        for i in range(0, len(bodies), BATCH_LIMIT):
            out.extend(self._enqueue_batch(list(bodies[i : i + BATCH_LIMIT])))
        return out

    def _enqueue_one(self, body: Mapping[str, Any]) -> Enqueued:
        v = self._request("POST", "/api/v1/tasks", json=body)
        return Enqueued(v["id"], v["deduplicated"])

    def _enqueue_batch(self, bodies: list[Mapping[str, Any]]) -> list[Enqueued]:
        v = self._request("POST", "/api/v1/tasks/batch", json={"tasks": bodies})
        return [Enqueued(t["id"], t["deduplicated"]) for t in v["tasks"]]

    # Tasks

    def get(self, task_id: str) -> Task:
        return Task.from_json(self._request("GET", _task_path(task_id)))

    def wait(
        self, task_id: str, timeout: float | None = None, *, poll_interval: float = 0.5
    ) -> Task:
        """Polls until the task is succeeded, failed or cancelled and returns
        it; raises :class:`WaitTimeout` after ``timeout`` seconds (``None``:
        no limit). Polls quickly at first (short tasks finish in
        milliseconds), then every ``poll_interval``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            task = self.get(task_id)
            if task.finished:
                return task
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(task_id, timeout or 0.0, task.state)
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, poll_interval)

    def cancel(self, task_id: str) -> CancelResult:
        """Cancels a queued task, or asks the worker of a running one to stop
        it; :class:`IllegalTransition` once it has finished."""
        v = self._request("POST", _task_path(task_id, "cancel"))
        return CancelResult(v["id"], v["outcome"], v["state"])

    def retry(self, task_id: str) -> Task:
        """Requeues a failed or cancelled task (its attempts are kept)."""
        return Task.from_json(self._request("POST", _task_path(task_id, "retry")))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        module: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> TaskPage:
        """One page of tasks, newest first (``limit``: 1..=10000, default 50)."""
        params = {
            k: v
            for k, v in (
                ("state", state),
                ("queue", queue),
                ("module", module),
                ("limit", limit),
                ("before", before),
            )
            if v is not None
        }
        v = self._request("GET", "/api/v1/tasks", params=params)
        return TaskPage([Task.from_json(t) for t in v["tasks"]], v.get("next_before"))

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        """Every task :meth:`list_tasks` selects, page after page."""
        before = filters.pop("before", None)
        while True:
            page = self.list_tasks(before=before, **filters)
            yield from page.tasks
            if page.next_before is None:
                return
            before = page.next_before

    def attempts(self, task_id: str) -> list[Attempt]:
        """Every attempt of the task, oldest first, with its captured logs."""
        v = self._request("GET", _task_path(task_id, "attempts"))
        return [Attempt.from_json(a) for a in v["attempts"]]


class EnqueueOptions(TypedDict, total=False):
    """The options of an enqueue, as the API names them (except ``delay``)."""

    queue: str
    #: Higher runs first (-32768..=32767).
    priority: int
    #: Not before this aware datetime ...
    run_after: datetime
    #: ... or not before this many seconds (or this timedelta) from now.
    delay: float | timedelta
    max_attempts: int
    #: While a task with this key is unfinished, enqueueing it again answers
    #: that task's id (``deduplicated``) instead of adding one.
    unique_key: str
    #: Fuel units, or ``"unlimited"``.
    fuel: Fuel
    memory_bytes: int
    timeout_ms: int


_PLAIN_OPTIONS = ("queue", "priority", "max_attempts", "unique_key", "fuel", "memory_bytes", "timeout_ms")


def enqueue_body(module: str, input: Any = None, **options: Unpack[EnqueueOptions]) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/tasks`` for :meth:`Client.enqueue`'s
    arguments."""
    unknown = set(options) - set(EnqueueOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown enqueue options: {', '.join(sorted(unknown))}")
    run_after = options.get("run_after")
    delay = options.get("delay")
    if run_after is not None and delay is not None:
        raise ValueError("give run_after or delay, not both")
    body: dict[str, Any] = {"module": module}
    if input is not None:
        body["input"] = input
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError("delay must not be negative")
        body["delay_ms"] = round(seconds * 1000)
    if run_after is not None:
        body["run_after"] = _time_text(run_after)
    for name in _PLAIN_OPTIONS:
        if options.get(name) is not None:
            body[name] = options[name]  # type: ignore[literal-required]
    return body
