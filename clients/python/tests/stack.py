"""Starts a real `wasmq serve` (+ optionally `wasmq worker`) on a fresh
database, for the tests and the bench: SQLite in a temporary file, or
PostgreSQL in a private schema (like tests/common/pg.rs) on
WASMQ_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/test),
dropped by Stack.stop().

The binary is $WASMQ_BIN, else ${CARGO_TARGET_DIR:-target}/release/wasmq; the
component is the Django example's, built by scripts/build-examples.sh python.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from wasmq_client import Client

REPO = Path(__file__).resolve().parents[3]
COMPONENT = REPO / "examples/target/wasm/django-order_total.wasm"
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/test"
# Queues the worker serves; tasks on any other queue stay queued.
SERVED_QUEUES = "default,reports"


class StackError(Exception):
    """The stack could not be started (a missing binary or component, a
    process that died)."""


class PgUnreachable(StackError):
    pass


def wasmq_bin() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    path = Path(os.environ.get("WASMQ_BIN") or target / "release/wasmq")
    if not path.is_file():
        raise StackError(f"{path} is missing: cargo build --release -p wasmq, or set WASMQ_BIN")
    return path


def module_cache() -> Path:
    """Compiled modules, kept between runs: the Python component takes
    10-30 s to compile."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "wasmq" / "client-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.pop("WASMQ_API_TOKEN", None)
    env["WASMQ_CACHE_DIR"] = str(module_cache())
    # A busy 2-core machine must not fail a compile that is not under test.
    env["WASMQ_COMPILE_TIMEOUT"] = "10m"
    env["WASMQ_LOG"] = "warn"
    return env


class Proc:
    """A child process whose output a thread collects, so a full pipe never
    blocks it and a failure can show what it said."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise StackError(f"{self.name} never printed {needle!r}:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines[-200:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _pg_connect(base: str):
    import psycopg

    try:
        return psycopg.connect(base, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as e:
        # Never print the URL: it may carry a password.
        raise PgUnreachable(f"PostgreSQL is unreachable ({type(e).__name__}); set WASMQ_TEST_PG_URL") from e


@dataclass
class Stack:
    backend: str
    url: str
    token: str
    token_file: Path
    database_url: str
    procs: list[Proc] = field(default_factory=list)
    pg: tuple[str, str] | None = None

    def client(self, **kwargs) -> Client:
        return Client(self.url, self.token, **kwargs)

    def output(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()}" for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.pg is not None:
            base, schema = self.pg
            try:
                with _pg_connect(base) as conn:
                    conn.execute("SET lock_timeout = '10s'")
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            except Exception as e:  # noqa: BLE001 - cleanup must not hide the test's result
                print(f"could not drop test schema {schema}: {e}", file=sys.stderr)


def start_stack(backend: str, tmp: Path, *, worker: bool = True, serve_args: list[str] | None = None) -> Stack:
    """`wasmq serve` with a fresh token on a fresh database, the component
    pushed as `order_total`; with `worker`, a worker on SERVED_QUEUES that
    has run one task already (so the component is compiled)."""
    binary = str(wasmq_bin())
    if not COMPONENT.is_file():
        raise StackError(f"{COMPONENT} is missing: run scripts/build-examples.sh python")
    pg = None
    if backend == "sqlite":
        database_url = f"sqlite://{tmp}/wasmq.db"
    else:
        base = os.environ.get("WASMQ_TEST_PG_URL", DEFAULT_PG_URL)
        schema = f"pyclient_{secrets.token_hex(8)}"
        with _pg_connect(base) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        pg = (base, schema)
        sep = "&" if "?" in base else "?"
        database_url = f"{base}{sep}options=-c%20search_path%3D{schema}&application_name=pyclient"
    token = secrets.token_hex(16)
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    stack = Stack(backend, "", token, token_file, database_url, pg=pg)
    env = _env()
    common = [binary, "--database-url", database_url]
    try:
        server = Proc(
            common + ["serve", "--listen", "127.0.0.1:0", "--api-token-file", str(token_file)]
            + (serve_args or []),
            env, f"wasmq serve ({backend})",
        )
        stack.procs.append(server)
        stack.url = server.wait_line("listening on ", 120).split("listening on ", 1)[1].strip()
        if worker:
            # Started after the server, which has migrated the database by now.
            stack.procs.append(Proc(
                common + ["worker", "--queues", SERVED_QUEUES, "--concurrency", "2",
                          "--poll-interval", "100ms", "--backoff-base", "50ms", "--backoff-cap", "100ms"],
                env, f"wasmq worker ({backend})",
            ))
        with stack.client() as c:
            c.push_module("order_total", COMPONENT)
            if worker:
                # The first run compiles the component unless the cache has
                # it: waiting here lets the tests' own waits be short.
                first = c.wait(c.enqueue("order_total", {"args": [[]]}).id, timeout=600)
                if first.state != "succeeded":
                    raise StackError(f"the warm-up task {first.state}: {first.error_message}")
    except BaseException as e:
        output = stack.output()
        stack.stop()
        if isinstance(e, StackError):
            raise StackError(f"{e}\n{output}") from e
        raise
    return stack
