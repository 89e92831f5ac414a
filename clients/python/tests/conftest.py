"""A real `wasmq serve` and `wasmq worker` per database backend (stack.py),
shared by the whole session. PostgreSQL unreachable skips its tests, or
fails them with CI=true."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import COMPONENT, PgUnreachable, Stack, StackError, start_stack
from wasmq_client import Client

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def component() -> Path:
    if not COMPONENT.is_file():
        pytest.fail(f"{COMPONENT} is missing: run scripts/build-examples.sh python")
    return COMPONENT


def _stack(backend: str, tmp_path_factory) -> Iterator[Stack]:
    try:
        stack = start_stack(backend, tmp_path_factory.mktemp(backend))
    except PgUnreachable as e:
        if IN_CI:
            pytest.fail(f"{e}, and CI=true: failing")
        pytest.skip(str(e))
    except StackError as e:
        pytest.fail(str(e))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def sqlite_stack(tmp_path_factory, component) -> Iterator[Stack]:
    yield from _stack("sqlite", tmp_path_factory)


@pytest.fixture(scope="session")
def postgres_stack(tmp_path_factory, component) -> Iterator[Stack]:
    yield from _stack("postgres", tmp_path_factory)


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with stack.client() as c:
        yield c
