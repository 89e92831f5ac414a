"""Concurrent enqueues share requests, and each caller still gets its own
answer: with fakes for the two requests (no server), then against a real
one."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from wasmq_client import BadRequest, Client, NotFound, TransportError
from wasmq_client._coalesce import Coalescer


class FakeServer:
    """Answers bodies {"n": i} with "id-i"; refuses n < 0; can lack the
    batch endpoint. The first request blocks until `release` is set, so the
    others pile up behind it and are batched."""

    def __init__(self, batch_endpoint: bool = True) -> None:
        self.batch_endpoint = batch_endpoint
        self.release = threading.Event()
        self.batches: list[int] = []
        self.singles = 0
        self.lock = threading.Lock()

    def one(self, body):
        self.release.wait(5)
        with self.lock:
            self.singles += 1
        if body["n"] < 0:
            raise BadRequest(400, "bad-request", f"n is {body['n']}")
        return f"id-{body['n']}"

    def batch(self, bodies):
        self.release.wait(5)
        if not self.batch_endpoint:
            raise NotFound(404, "no-route", "no route")
        with self.lock:
            self.batches.append(len(bodies))
        for i, b in enumerate(bodies):
            if b["n"] < 0:
                raise BadRequest(400, "bad-request", f"tasks[{i}]: n is {b['n']}")
        return [f"id-{b['n']}" for b in bodies]


def run_concurrently(c: Coalescer, server: FakeServer, ns: list[int]):
    def call(n):
        try:
            return c.submit({"n": n})
        except BadRequest as e:
            return e

    with ThreadPoolExecutor(len(ns)) as pool:
        futures = [pool.submit(call, n) for n in ns]
        # Let the calls queue up behind the first requests.
        threading.Event().wait(0.5)
        server.release.set()
        return [f.result() for f in futures]


@pytest.mark.parametrize("batch_endpoint", [True, False])
def test_each_caller_gets_its_own_answer(batch_endpoint):
    server = FakeServer(batch_endpoint)
    c = Coalescer(server.one, server.batch, senders=2)
    ns = list(range(40)) + [-1]
    answers = run_concurrently(c, server, ns)
    assert answers[:40] == [f"id-{n}" for n in range(40)]
    assert isinstance(answers[40], BadRequest) and "n is -1" in answers[40].message
    if batch_endpoint:
        # Batched, and the batch with the bad item was retried one by one.
        assert max(server.batches) > 1
    else:
        assert not c._batch_ok and server.singles >= 41
    c.close()


def test_a_failed_batch_fails_its_callers_only():
    server = FakeServer()

    def broken(bodies):
        raise TransportError("connection reset")

    c = Coalescer(server.one, broken, senders=1)
    server.release.set()
    assert c.submit({"n": 1}) == "id-1"  # alone: sent as a single request
    server.release.clear()
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(c.submit, {"n": n}) for n in range(10)]
        threading.Event().wait(0.3)
        server.release.set()
        errors = [f.exception() for f in futures]
    # One sent alone succeeds; those batched share the batch's error.
    assert all(e is None or isinstance(e, TransportError) for e in errors)
    assert any(isinstance(e, TransportError) for e in errors)
    c.close()
    with pytest.raises(Exception, match="closed"):
        c.submit({"n": 2})


def test_threads_share_requests_against_the_server(client: Client):
    queue = f"coalesce-{uuid.uuid4().hex[:8]}"
    bodies = [{"args": [[]], "kwargs": {"n": n}} for n in range(200)]
    with ThreadPoolExecutor(32) as pool:
        sent = list(pool.map(lambda b: client.enqueue("order_total", b, queue=queue), bodies))
        bad = pool.submit(client.enqueue, "order_total", queue=queue, priority=1 << 20)
        with pytest.raises(BadRequest):
            bad.result()
    assert len({s.id for s in sent}) == 200
    for n in (0, 117, 199):
        assert client.get(sent[n].id).input == bodies[n]
    assert len(list(client.iter_tasks(queue=queue, limit=1000))) == 200
