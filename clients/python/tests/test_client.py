"""The client against a real `wasmq serve` + `wasmq worker`, on SQLite and
on PostgreSQL (the `stack` fixture runs each test on both)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from wasmq_client import (
    AboveMaximum,
    BadRequest,
    Client,
    Forbidden,
    IllegalTransition,
    InvalidModule,
    NotFound,
    TransportError,
    Unauthorized,
    WaitTimeout,
)

LINES = [{"sku": "tea", "unit_cents": 350, "quantity": 2}, {"sku": "cup", "unit_cents": 900, "quantity": 1}]
# Served by no worker: a task there stays queued until cancelled.
PARKED = "parked"


def call(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def test_enqueue_wait_get(client: Client):
    sent = client.enqueue("order_total", call(LINES, discount_percent=10))
    assert not sent.deduplicated
    task = client.wait(sent.id, timeout=60)
    assert task.state == "succeeded", task.error_message
    assert task.result == {"lines": 2, "subtotal_cents": 1600, "total_cents": 1440}
    assert task.input == call(LINES, discount_percent=10)
    assert (task.module_name, task.queue, task.priority, task.attempt) == ("order_total", "default", 0, 1)
    assert task.enqueued_at <= task.started_at <= task.finished_at
    again = client.get(sent.id)
    assert again.result == task.result and again.finished


def test_push_module_from_bytes_and_path(client: Client, component):
    name = f"totals-{uuid.uuid4().hex[:8]}"
    first = client.push_module(name, component.read_bytes(), version="1")
    assert (first.name, first.version, first.created) == (name, "1", True)
    same = client.push_module(name, component, version="1")
    assert not same.created and same.sha256 == first.sha256
    with open(component, "rb") as f:
        # The same bytes without a version: the version that has them.
        again = client.push_module(name, f)
    assert (again.version, again.created) == ("1", False)
    with pytest.raises(InvalidModule) as e:
        client.push_module(name, b"\0asm not a component")
    assert e.value.kind == "invalid-module" and e.value.status == 400


def test_enqueue_options_are_stored(client: Client):
    key = f"order-{uuid.uuid4()}"
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    sent = client.enqueue(
        "order_total@1", call(LINES), queue=PARKED, priority=7, run_after=later,
        max_attempts=4, unique_key=key, fuel=5_000_000_000, memory_bytes=64 << 20, timeout_ms=5_000,
    )
    task = client.get(sent.id)
    assert (task.queue, task.priority, task.max_attempts, task.state) == (PARKED, 7, 4, "queued")
    assert abs((task.run_after - later).total_seconds()) < 1
    assert task.raw["unique_key"] == key
    assert task.raw["limits"] == {"fuel": 5_000_000_000, "memory_bytes": 64 << 20, "timeout_ms": 5_000}
    dup = client.enqueue("order_total", call([]), queue=PARKED, unique_key=key)
    assert dup.deduplicated and dup.id == sent.id
    delayed = client.get(client.enqueue("order_total", queue=PARKED, delay=timedelta(minutes=5)).id)
    assert timedelta(minutes=4) < delayed.run_after - delayed.enqueued_at < timedelta(minutes=6)


def test_bad_options_raise_with_the_api_kind(client: Client):
    with pytest.raises(BadRequest) as e:
        client.enqueue("order_total", call(), priority=40_000)
    assert e.value.status == 400 and e.value.kind == "bad-request"
    # The server allows no unlimited fuel unless started with --max-fuel unlimited.
    with pytest.raises(AboveMaximum) as e:
        client.enqueue("order_total", call(), fuel="unlimited")
    assert e.value.kind == "above-maximum" and "--max-fuel" in e.value.message
    with pytest.raises(NotFound) as e:
        client.enqueue("no-such-module", call())
    assert e.value.kind == "not-found"
    with pytest.raises(ValueError):
        client.enqueue("order_total", run_after=datetime.now(timezone.utc), delay=1)
    with pytest.raises(ValueError):
        client.enqueue("order_total", run_after=datetime.now())


def test_failure_and_retry(client: Client):
    bad = call([{"sku": "tea", "unit_cents": 350, "quantity": 0}])
    sent = client.enqueue("order_total", bad, max_attempts=1)
    task = client.wait(sent.id, timeout=60)
    assert task.state == "failed"
    assert task.error_kind == "permanent"
    assert task.error_message == "ValueError: quantity of tea must be at least 1"
    (attempt,) = client.attempts(sent.id)
    assert attempt.outcome == "task-error" and attempt.worker_id
    assert "Traceback (most recent call last)" in attempt.logs
    requeued = client.retry(sent.id)
    assert requeued.state == "queued"
    task = client.wait(sent.id, timeout=60)
    assert task.state == "failed" and task.attempt == 2
    with pytest.raises(IllegalTransition) as e:
        client.cancel(sent.id)
    assert e.value.status == 409 and e.value.kind == "illegal-transition"


def test_guest_sdk_refuses_arguments_that_do_not_fit(client: Client):
    task = client.wait(client.enqueue("order_total", call(LINES, colour="red")).id, timeout=60)
    assert task.state == "failed" and task.error_kind == "invalid-input"
    assert "colour" in task.error_message
    task = client.wait(client.enqueue("order_total", {"lines": LINES}).id, timeout=60)
    assert task.state == "failed" and task.error_kind == "invalid-input"


def test_cancel_and_wait_timeout(client: Client):
    sent = client.enqueue("order_total", call(LINES), queue=PARKED)
    with pytest.raises(WaitTimeout) as e:
        client.wait(sent.id, timeout=0.3)
    assert e.value.state == "queued"
    cancelled = client.cancel(sent.id)
    assert (cancelled.outcome, cancelled.state) == ("cancelled", "cancelled")
    assert client.wait(sent.id, timeout=5).state == "cancelled"
    assert client.retry(sent.id).state == "queued"
    client.cancel(sent.id)


def test_list_tasks_filters_and_pages(client: Client):
    queue = f"list-{uuid.uuid4().hex[:8]}"
    ids = [client.enqueue("order_total", call([]), queue=queue).id for _ in range(5)]
    page = client.list_tasks(queue=queue, limit=2)
    assert [t.id for t in page.tasks] == ids[::-1][:2] and page.next_before is not None
    assert [t.id for t in client.iter_tasks(queue=queue, limit=2)] == ids[::-1]
    assert [t.id for t in client.list_tasks(queue=queue, state="queued", module="order_total").tasks] == ids[::-1]
    assert client.list_tasks(queue=queue, state="running").tasks == []
    with pytest.raises(BadRequest):
        client.list_tasks(state="sleeping")


def test_unknown_task(client: Client):
    with pytest.raises(NotFound) as e:
        client.get(str(uuid.uuid4()))
    assert e.value.status == 404 and e.value.kind == "not-found"
    # Quoted into one path segment: not another route.
    for odd in ("../modules", "x?state=queued", ""):
        with pytest.raises((BadRequest, NotFound)):
            client.get(odd)


def test_enqueue_many(client: Client):
    queue = f"bulk-{uuid.uuid4().hex[:8]}"
    sent = client.enqueue_many(
        {"module": "order_total", "input": call([], n), "queue": queue, "priority": n % 3}
        for n in range(1500)
    )
    assert len(sent) == 1500 and len({s.id for s in sent}) == 1500
    for n in (0, 999, 1000, 1499):
        task = client.get(sent[n].id)
        assert task.input == call([], n) and task.priority == n % 3
    with pytest.raises(BadRequest) as e:
        client.enqueue_many(
            [{"module": "order_total", "queue": queue}, {"module": "order_total", "queue": queue, "priority": 1 << 20}]
        )
    assert "tasks[1]" in e.value.message
    assert len(list(client.iter_tasks(queue=queue, limit=1000))) == 1500


def test_auth(stack):
    with Client(stack.url) as anonymous:
        with pytest.raises(Unauthorized) as e:
            anonymous.list_tasks()
        assert e.value.status == 401
    with Client(stack.url, "x" * 32) as wrong:
        with pytest.raises(Forbidden) as e:
            wrong.list_tasks()
        assert e.value.kind == "forbidden"
    with Client(stack.url, token_file=stack.token_file) as from_file:
        from_file.list_tasks(limit=1)


def test_transport_error():
    with Client("http://127.0.0.1:9", timeout=2) as c, pytest.raises(TransportError):
        c.list_tasks()
