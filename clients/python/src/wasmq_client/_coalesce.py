"""Concurrent single enqueues of one Client share requests.

Each ``Client.enqueue`` waits for its task's durable commit on the server
(a few milliseconds), so one thread enqueues a few hundred tasks a second,
and many threads of one process soon spend the GIL on HTTP framing instead.
Here the calls that are waiting at the same moment go out together: a few
sender threads each take every pending body (up to 1,000) and send them as
one ``POST /api/v1/tasks/batch`` (one alone as ``POST /api/v1/tasks``), and
each caller still gets its own id or its own error: when the server refuses
a batch (an invalid item, or no batch endpoint), its bodies are sent one by
one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ApiError, WasmqError

#: Most tasks of one ``POST /api/v1/tasks/batch``.
BATCH_LIMIT = 1000

# Answers to a batch that its items, sent alone, may not get.
_REFUSED_BATCH = {400, 404, 405, 413}

Body = Mapping[str, Any]


class _Pending:
    __slots__ = ("body", "done", "result", "error")

    def __init__(self, body: Body) -> None:
        self.body = body
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Coalescer:
    def __init__(
        self,
        send_one: Callable[[Body], Any],
        send_batch: Callable[[list[Body]], list[Any]],
        senders: int,
    ) -> None:
        self._send_one = send_one
        self._send_batch = send_batch
        self._senders = senders
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._closed = False
        self._batch_ok = True

    def submit(self, body: Body) -> Any:
        item = _Pending(body)
        with self._cond:
            if self._closed:
                raise WasmqError("the client is closed")
            self._start_senders()
            self._queue.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _start_senders(self) -> None:
        # A forked child (a pre-forking web server) has the parent's list
        # but none of its threads.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._threads = []
        while len(self._threads) < self._senders:
            t = threading.Thread(target=self._run, name="wasmq-enqueue", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                items = self._queue[:BATCH_LIMIT]
                del self._queue[:BATCH_LIMIT]
            self._send(items)

    def _send(self, items: list[_Pending]) -> None:
        if len(items) > 1 and self._batch_ok:
            try:
                results = self._send_batch([i.body for i in items])
            except ApiError as e:
                if e.status not in _REFUSED_BATCH:
                    return self._fail(items, e)
                if e.status in (404, 405):
                    # A server without the batch endpoint.
                    self._batch_ok = False
            except BaseException as e:  # noqa: BLE001 - handed to the waiting callers
                return self._fail(items, e)
            else:
                for item, result in zip(items, results, strict=True):
                    item.result = result
                    item.done.set()
                return None
        for item in items:
            try:
                item.result = self._send_one(item.body)
            except BaseException as e:  # noqa: BLE001 - raised by the caller
                item.error = e
            item.done.set()
        return None

    @staticmethod
    def _fail(items: list[_Pending], error: BaseException) -> None:
        for item in items:
            item.error = error
            item.done.set()
