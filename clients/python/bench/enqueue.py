"""Django `enqueue()` through WasmqBackend: tasks/s from one process.

Starts `wasmq serve` on a fresh database (no worker: this measures enqueue
alone), configures the example Django project (examples/django) against it,
and enqueues `shop.tasks.order_total` in three ways, 3 runs each, printing
the median:

- `enqueue`   task.enqueue(...) in a loop, one thread: one HTTP request per
              task over a kept-alive connection;
- `threads`   the same from --threads threads of the one process (Django
              makes a backend per thread; they share one client): the
              enqueues waiting at the same moment share a request
              (`POST /api/v1/tasks/batch`), each still getting its own id;
- `threads, one request each`  the same with OPTIONS["COALESCE"] off;
- `bulk`      backend.enqueue_many(task, calls): one request per 1,000 tasks.

Usage (from the repository root, after scripts/setup.sh and
scripts/build-examples.sh python):

    ~/.cache/wasmq/venv-client/bin/python clients/python/bench/enqueue.py \
        [--backend postgres|sqlite] [--tasks 5000] [--threads 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from stack import REPO, start_stack  # noqa: E402

LINES = [{"sku": "tea", "unit_cents": 350, "quantity": 2}]


def sequential(order_total, n: int) -> None:
    for i in range(n):
        order_total.enqueue(LINES, discount_percent=i % 100)


def threaded(order_total, n: int, threads: int) -> None:
    def run(k: int) -> None:
        for i in range(k):
            order_total.enqueue(LINES, discount_percent=i % 100)

    share = [n // threads + (1 if t < n % threads else 0) for t in range(threads)]
    workers = [threading.Thread(target=run, args=(k,)) for k in share]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def uncoalesced(fn):
    """`fn` with the backend's COALESCE option off."""
    from django.conf import settings
    from django.test import override_settings

    def run() -> None:
        tasks = {alias: dict(conf) for alias, conf in settings.TASKS.items()}
        tasks["default"]["OPTIONS"] = dict(tasks["default"]["OPTIONS"], COALESCE=False)
        with override_settings(TASKS=tasks):
            fn()

    return run


def bulk(order_total, n: int) -> None:
    from django.tasks import default_task_backend

    default_task_backend.enqueue_many(order_total, [([LINES], {"discount_percent": i % 100}) for i in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per run")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="wasmq-bench-") as tmp:
        stack = start_stack(args.backend, Path(tmp), worker=False)
        try:
            os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
            os.environ["DJANGO_DB"] = str(Path(tmp) / "django.sqlite3")
            os.environ["WASMQ_URL"] = stack.url
            os.environ["WASMQ_TOKEN_FILE"] = str(stack.token_file)
            sys.path.insert(0, str(REPO / "examples/django"))
            import django

            django.setup()
            from shop.tasks import order_total

            # Warm-up: the connection, the module lookup of the server.
            sequential(order_total, 100)
            modes = {
                "enqueue": lambda: sequential(order_total, args.tasks),
                f"threads ({args.threads})": lambda: threaded(order_total, args.tasks, args.threads),
                f"threads ({args.threads}), one request each": uncoalesced(
                    lambda: threaded(order_total, args.tasks, args.threads)
                ),
                "bulk (enqueue_many)": lambda: bulk(order_total, args.tasks),
            }
            print(f"{args.tasks} Django enqueue()s per run, wasmq serve on {args.backend}, median of {args.runs}")
            for name, fn in modes.items():
                rates = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    fn()
                    rates.append(args.tasks / (time.perf_counter() - start))
                runs = ", ".join(f"{r:,.0f}" for r in rates)
                print(f"  {name:<36} {statistics.median(rates):>8,.0f} tasks/s   (runs: {runs})", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
