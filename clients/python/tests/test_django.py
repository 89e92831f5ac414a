"""WasmqBackend in the example Django 6 project (examples/django): Django
enqueues, a wasmq worker runs the component built from the same function,
get_result maps the outcome back. On both databases of wasmq."""

from __future__ import annotations

import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from stack import REPO, Stack

PROJECT = REPO / "examples/django"
LINES = [{"sku": "tea", "unit_cents": 350, "quantity": 2}]
_configured: list[bool] = []


def _setup_django(stack: Stack, tmp: Path) -> None:
    if _configured:
        return
    os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    os.environ["DJANGO_DB"] = str(tmp / "django.sqlite3")
    os.environ["WASMQ_URL"] = stack.url
    os.environ["WASMQ_TOKEN_FILE"] = str(stack.token_file)
    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()
    _configured.append(True)


@pytest.fixture
def tasks_on(stack: Stack, tmp_path_factory):
    """The project's TASKS setting pointed at `stack`."""
    _setup_django(stack, tmp_path_factory.mktemp("django"))
    from django.conf import settings
    from django.test import override_settings

    tasks = {alias: dict(conf) for alias, conf in settings.TASKS.items()}
    options = dict(tasks["default"]["OPTIONS"], URL=stack.url, TOKEN_FILE=str(stack.token_file))
    tasks["default"]["OPTIONS"] = options
    with override_settings(TASKS=tasks):
        yield tasks


@pytest.fixture
def order_total(tasks_on):
    from shop.tasks import order_total

    return order_total


def finished(result, client, timeout=60):
    client.wait(result.id, timeout=timeout)
    result.refresh()
    return result


def test_enqueue_runs_the_component_and_get_result_maps_success(order_total, client):
    from django.tasks import TaskResultStatus, default_task_backend

    result = order_total.enqueue(LINES, discount_percent=50)
    assert result.id and result.status == TaskResultStatus.READY and result.enqueued_at
    task = client.get(result.id)
    assert task.module_name == "order_total"
    assert task.input == {"args": [LINES], "kwargs": {"discount_percent": 50}}
    assert task.max_attempts == 1  # from the project's MODULES entry

    client.wait(result.id, timeout=60)
    got = order_total.get_result(result.id)
    assert got.status == TaskResultStatus.SUCCESSFUL
    assert got.return_value == {"lines": 1, "subtotal_cents": 700, "total_cents": 350}
    assert got.args == [LINES] and got.kwargs == {"discount_percent": 50}
    assert got.errors == [] and got.attempts == 1 and len(got.worker_ids) == 1
    assert got.enqueued_at <= got.started_at == got.last_attempted_at <= got.finished_at
    assert got.task.func is order_total.func and got.backend == "default"
    assert default_task_backend.get_result(result.id).return_value == got.return_value
    # refresh() goes through get_result too.
    assert finished(result, client).return_value == got.return_value


def test_a_failing_task_gives_djangos_error_shape(order_total, client):
    from django.tasks import TaskResultStatus

    result = finished(order_total.enqueue([{"sku": "tea", "unit_cents": 1, "quantity": 0}]), client)
    assert result.status == TaskResultStatus.FAILED
    assert result.is_finished and result.attempts == 1
    (error,) = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert 'in order_total' in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: quantity of tea must be at least 1")
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value


def test_arguments_that_do_not_fit_fail_as_wasmq_task_errors(order_total, client):
    from django.tasks import TaskResultStatus

    from wasmq_client import outcomes

    result = finished(order_total.enqueue(LINES, colour="red"), client)
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is outcomes.TaskError
    assert "colour" in error.traceback


def test_a_rolled_back_transaction_enqueues_nothing(order_total, client):
    from django.db import transaction

    def count():
        return len(list(client.iter_tasks(module="order_total", limit=10000)))

    before = count()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            result = order_total.enqueue(LINES)
            assert result.id == ""  # not sent yet
            raise RuntimeError("roll back")
    assert result.id == ""
    assert count() == before

    with transaction.atomic():
        committed = order_total.enqueue(LINES)
        with transaction.atomic():  # a savepoint: sent with the outer commit
            inner = order_total.enqueue(LINES, discount_percent=100)
        assert committed.id == inner.id == "" and count() == before
    assert committed.id and inner.id and count() == before + 2
    assert finished(inner, client).return_value["total_cents"] == 0


def test_unknown_id_raises_task_result_does_not_exist(order_total):
    from django.tasks.exceptions import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        order_total.get_result(str(uuid.uuid4()))
    for odd in ("not-a-task-id", "../modules", ""):
        with pytest.raises(TaskResultDoesNotExist):
            order_total.get_result(odd)


def test_priority_queue_and_run_after_are_honoured(order_total, client):
    from django.tasks import TaskResultStatus, default_task_backend
    from django.utils import timezone

    assert default_task_backend.supports_defer and default_task_backend.supports_priority
    assert default_task_backend.supports_get_result and not default_task_backend.supports_async_task
    later = timezone.now() + timedelta(hours=1)
    result = order_total.using(priority=-20, queue_name="reports", run_after=later).enqueue(LINES)
    task = client.get(result.id)
    assert (task.queue, task.priority, task.state) == ("reports", -20, "queued")
    assert abs((task.run_after - later).total_seconds()) < 1
    got = order_total.get_result(result.id)
    assert got.status == TaskResultStatus.READY
    assert (got.task.queue_name, got.task.priority) == ("reports", -20)
    client.cancel(result.id)
    got = order_total.get_result(result.id)
    assert got.status == TaskResultStatus.FAILED and got.errors[0].exception_class_path.endswith(".Cancelled")


def test_invalid_tasks_are_refused(tasks_on):
    from django.tasks import task
    from django.tasks.exceptions import InvalidTask

    from shop.tasks import order_total

    with pytest.raises(InvalidTask):
        order_total.using(queue_name="nowhere")
    with pytest.raises(InvalidTask, match="context"):
        task(takes_context=True)(_with_context)


def _with_context(context, x):
    return x


def test_module_mapping_per_task(tasks_on, stack, client, component):
    from django.test import override_settings

    client.push_module("totals", component)
    tasks = {a: dict(c) for a, c in tasks_on.items()}
    tasks["default"]["OPTIONS"] = dict(tasks["default"]["OPTIONS"], MODULES={"shop.tasks.order_total": "totals@1"})
    with override_settings(TASKS=tasks):
        from shop.tasks import order_total

        result = order_total.enqueue(LINES)
        assert client.get(result.id).module_name == "totals"
        client.wait(result.id, timeout=60)
        assert order_total.get_result(result.id).return_value["total_cents"] == 700


def test_bulk_enqueue(tasks_on, client):
    from django.tasks import default_task_backend

    from shop.tasks import order_total

    results = default_task_backend.enqueue_many(order_total, [([LINES], {"discount_percent": n}) for n in range(50)])
    assert len({r.id for r in results}) == 50
    last = client.wait(results[-1].id, timeout=60)
    assert last.input == {"args": [LINES], "kwargs": {"discount_percent": 49}}


def test_get_result_in_a_process_that_never_imported_the_task(order_total, stack, client, tmp_path):
    import subprocess

    result = order_total.enqueue(LINES)
    client.wait(result.id, timeout=60)
    # A process that only reads results: the backend finds the task by
    # importing the apps' tasks modules itself.
    script = (
        "import django; django.setup()\n"
        "from django.tasks import default_task_backend\n"
        f"r = default_task_backend.get_result({result.id!r})\n"
        "print(r.task.module_path, r.status, r.return_value['total_cents'])\n"
    )
    env = dict(os.environ, WASMQ_URL=stack.url, WASMQ_TOKEN_FILE=str(stack.token_file),
               DJANGO_DB=str(tmp_path / "db.sqlite3"), DJANGO_SETTINGS_MODULE="mysite.settings",
               PYTHONPATH=os.pathsep.join([str(PROJECT), str(REPO / "clients/python/src")]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["shop.tasks.order_total", "SUCCESSFUL", "700"]


def test_the_example_views(order_total, client):
    import json

    from django.test import Client as HttpClient

    http = HttpClient()
    body = {"lines": LINES, "discount_percent": 10}
    answer = http.post("/totals/", json.dumps(body), content_type="application/json")
    assert answer.status_code == 202
    task_id = answer.json()["id"]
    client.wait(task_id, timeout=60)
    shown = http.get(f"/totals/{task_id}/").json()
    assert shown["status"] == "SUCCESSFUL" and shown["total"]["total_cents"] == 630
    bad = http.post("/totals/", json.dumps({"lines": [dict(LINES[0], quantity=0)]}), content_type="application/json")
    client.wait(bad.json()["id"], timeout=60)
    shown = http.get(f"/totals/{bad.json()['id']}/").json()
    assert shown["status"] == "FAILED" and shown["error"] == "ValueError: quantity of tea must be at least 1"
    assert http.get(f"/totals/{uuid.uuid4()}/").status_code == 404


def test_async_enqueue_and_get_result(order_total, client):
    import asyncio

    result = asyncio.run(order_total.aenqueue(LINES, discount_percent=100))
    client.wait(result.id, timeout=60)
    got = asyncio.run(order_total.aget_result(result.id))
    assert got.return_value["total_cents"] == 0
