"""Outbound HTTP for tasks: a small synchronous client over ``wasi:http``.

::

    from wasmq import TaskError, http, task

    @task
    def run(ctx, input):
        token = ctx.config("api-token")
        r = http.get(input["url"], headers={"authorization": f"Bearer {token}"})
        if not r.ok:
            raise TaskError.permanent(f"GET {input['url']}: status {r.status}")
        return r.json()

The host links ``wasi:http`` only into runs its operator granted a URL
(``wasmq module grant NAME --allow-http URL``, or ``wasmq run --allow-http
URL``), and checks every request against the grant. Build the component
with the world ``http-task`` (``componentize-py -d wit -w http-task ...``),
which imports ``wasi:http/outgoing-handler``; a component built with
``task`` or ``granted-task`` has no HTTP, and these functions raise a
``permanent`` :class:`~wasmq.TaskError` that says so. Import this module at
the top of the app (componentize-py bundles what the app imports at build
time).

- A request that fails (refused by the host, a connection or DNS error, a
  timeout, a body over ``max_bytes``) raises :class:`HttpError`, a
  :class:`~wasmq.TaskError`: uncaught, it fails the task with a message
  that names the request and the cause, such as the host's refusal
  (``GET http://10.0.0.1/: wasmq: ... is not granted to this run ...``).
  Timeouts and connection failures are ``retryable``, anything else
  ``permanent``.
- Any response, whatever its status, is a :class:`Response`: check
  ``response.ok`` or ``response.status``.
- Requests and responses are whole ``bytes``: the response body is read
  until the end, up to ``max_bytes`` (16 MiB by default, which is also the
  host's default cap on all the response bodies of a run,
  ``WASMQ_HTTP_MAX_RESPONSE_BYTES``).

Natively, under :class:`wasmq.testing.TestContext`, requests go to the
function given as ``TestContext(http=...)`` instead, which answers them.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from . import _NATIVE, TaskError

try:
    from componentize_py_types import Err
    from wit_world.imports import outgoing_handler, streams
    from wit_world.imports import wasi_http_types as _types
except ImportError:
    # Natively there are no bindings at all; in a component built with
    # world `task` or `granted-task`, no wasi:http ones.
    outgoing_handler = None

__all__ = ["DEFAULT_MAX_BYTES", "HttpError", "Request", "Response", "get", "post", "request"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""The largest response body read by default, in bytes."""

# blocking-write-and-flush takes at most 4096 bytes a call.
_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024

# wasi:http error codes worth a retry: the peer or the path to it may recover.
_TRANSIENT = frozenset(
    {
        "dns-timeout",
        "destination-unavailable",
        "connection-refused",
        "connection-terminated",
        "connection-timeout",
        "connection-read-timeout",
        "connection-write-timeout",
        "connection-limit-reached",
        "http-response-timeout",
    }
)

_NO_HTTP = (
    "wasmq.http needs wasi:http/outgoing-handler, which this component does not import: build it "
    "with the world http-task instead: componentize-py -d wit -w http-task componentize ..."
)
_NO_HTTP_NATIVE = (
    "wasmq.http has no network outside a component: run the task under "
    "wasmq.testing.TestContext(http=...), whose function answers its requests"
)

Headers = Union[Mapping[str, Union[str, bytes]], Iterable[Tuple[str, Union[str, bytes]]], None]


class HttpError(TaskError):
    """A request that got no response, or whose body could not be read.

    A :class:`~wasmq.TaskError` (``retryable`` for timeouts and connection
    failures, ``permanent`` otherwise) whose message names the request and
    the cause; ``code`` is the ``wasi:http`` error code (``"internal-error"``
    for the host's refusals, ``"connection-refused"``, ...) or ``None``.
    """

    def __init__(self, kind: str, message: str, code: Optional[str] = None):
        super().__init__(kind, message, {"http_error": code} if code is not None else None)
        self.code = code


@dataclass(frozen=True)
class Request:
    """A request as :func:`request` sends it (and as a test's handler gets it)."""

    method: str
    url: str
    headers: Tuple[Tuple[str, str], ...] = ()
    body: Optional[bytes] = None

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class Response:
    """An HTTP response: ``status`` (int), ``headers`` (a dict of lowercase
    names; repeated headers joined with ``", "``) and ``body`` (bytes)."""

    def __init__(self, status: int, headers: Headers = None, body: Union[bytes, str] = b"") -> None:
        self.status = int(status)
        self.headers: Dict[str, str] = {}
        for name, value in _pairs(headers):
            name = name.lower()
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self.body = body.encode() if isinstance(body, str) else bytes(body)

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def text(self) -> str:
        """The body as UTF-8 text (invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes>"


# Natively: wasmq.testing sets this for the duration of a TestContext run.
_handler: Optional[Callable[[Request], Response]] = None


def request(
    method: str,
    url: str,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    timeout: Optional[float] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Response:
    """Sends one request and returns its response, body read in full.

    ``headers`` is a dict or a list of ``(name, value)`` pairs; ``body``
    bytes or text (sent as UTF-8). ``timeout`` (seconds) bounds the
    connection, the wait for the first byte and each wait between bytes
    (the host applies its own limits too, and the task's deadline). A body
    longer than ``max_bytes`` raises :class:`HttpError`. Redirects are not
    followed: a 3xx is a response like any other.
    """
    if not isinstance(method, str) or not method:
        raise TypeError("method must be a non-empty str")
    if isinstance(body, str):
        body = body.encode()
    elif body is not None:
        body = bytes(body)
    req = Request(method.upper(), str(url), tuple(_pairs(headers)), body)
    if _handler is not None:
        response = _handler(req)
        if not isinstance(response, Response):
            raise TypeError(f"the test's http handler must return a wasmq.http.Response, not {type(response).__name__}")
        if len(response.body) > max_bytes:
            raise _too_long(req, max_bytes)
        return response
    if outgoing_handler is None:
        raise TaskError.permanent(_NO_HTTP_NATIVE if _NATIVE else _NO_HTTP)
    return _send(req, timeout, max_bytes)


def get(url: str, headers: Headers = None, **options: Any) -> Response:
    """``GET url``; ``options`` as for :func:`request` (``timeout``, ``max_bytes``)."""
    return request("GET", url, headers, None, **options)


def post(url: str, body: Union[bytes, str, None] = None, headers: Headers = None, json: Any = None, **options: Any) -> Response:
    """``POST url`` with ``body``, or with the JSON value ``json`` (compact, and
    ``content-type: application/json`` unless ``headers`` set one)."""
    if json is not None:
        if body is not None:
            raise TypeError("give body or json, not both")
        body = _json.dumps(json, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        pairs = list(_pairs(headers))
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("content-type", "application/json"))
        headers = pairs
    return request("POST", url, headers, body, **options)


def _pairs(headers: Headers) -> List[Tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif not isinstance(value, str):
            raise TypeError(f"header {name!r}: the value must be str or bytes, not {type(value).__name__}")
        out.append((name, value))
    return out


def _kebab(camel: str) -> str:
    out = []
    for i, c in enumerate(camel):
        if c.isupper() and i > 0:
            out.append("-")
        out.append(c.lower())
    return "".join(out)


def _code_name(code: Any) -> str:
    # `ErrorCode_ConnectionRefused` -> `connection-refused`.
    return _kebab(type(code).__name__.split("_", 1)[-1])


def _failure(req: Request, code: Any, doing: Optional[str] = None) -> HttpError:
    """An HttpError for a wasi:http error-code."""
    name = _code_name(code)
    value = getattr(code, "value", None)
    if isinstance(value, str) and value:
        # internal-error(message): the host's own words (its refusals).
        why = value
    elif value is not None and hasattr(value, "__dict__"):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(value).items() if v is not None)
        why = f"{name} ({fields})" if fields else name
    else:
        why = name
    kind = "retryable" if name in _TRANSIENT else "permanent"
    return HttpError(kind, _message(req, why, doing), name)


def _message(req: Request, why: str, doing: Optional[str] = None) -> str:
    return f"{req.method} {req.url}: {doing + ': ' if doing else ''}{why}"


def _too_long(req: Request, max_bytes: int) -> HttpError:
    return HttpError("permanent", _message(req, f"the response body is over {max_bytes} bytes (max_bytes)"))


def _split(req: Request) -> Tuple[bool, str, str]:
    try:
        parts = urlsplit(req.url)
    except ValueError as e:
        raise HttpError("permanent", f"{req.url}: not a URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise HttpError("permanent", f"{req.url}: only http:// and https:// URLs")
    if not parts.netloc or "@" in parts.netloc:
        raise HttpError("permanent", f"{req.url}: no host (or credentials in the URL, which are not supported)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme == "https", parts.netloc, path


_METHODS = {
    "GET": "Method_Get",
    "HEAD": "Method_Head",
    "POST": "Method_Post",
    "PUT": "Method_Put",
    "DELETE": "Method_Delete",
    "CONNECT": "Method_Connect",
    "OPTIONS": "Method_Options",
    "TRACE": "Method_Trace",
    "PATCH": "Method_Patch",
}


def _drop(resource: Any) -> None:
    # Releases a wasi resource now: a child resource (a stream, a pollable)
    # must go before its parent.
    resource.__exit__(None, None, None)


def _send(req: Request, timeout: Optional[float], max_bytes: int) -> Response:
    https, authority, path = _split(req)
    try:
        fields = _types.Fields.from_list([(k, v.encode()) for k, v in req.headers])
    except Err as e:
        raise HttpError("permanent", _message(req, f"header refused: {_code_name(e.value)}")) from None
    # The request takes the fields, and handle() takes the request.
    outgoing = _types.OutgoingRequest(fields)
    method = _METHODS.get(req.method)
    for setter, value, what in (
        (outgoing.set_method, getattr(_types, method)() if method else _types.Method_Other(req.method), "method"),
        (outgoing.set_scheme, _types.Scheme_Https() if https else _types.Scheme_Http(), "scheme"),
        (outgoing.set_authority, authority, "host"),
        (outgoing.set_path_with_query, path, "path"),
    ):
        try:
            setter(value)
        except Err:
            _drop(outgoing)
            raise HttpError("permanent", _message(req, f"invalid {what}")) from None
    body = outgoing.body() if req.body is not None else None
    options = None
    if timeout is not None:
        ns = max(0, int(timeout * 1_000_000_000))
        options = _types.RequestOptions()
        for set_timeout in (options.set_connect_timeout, options.set_first_byte_timeout, options.set_between_bytes_timeout):
            try:
                set_timeout(ns)
            except Err:
                pass  # not supported here: the host's own timeouts apply
    try:
        future = outgoing_handler.handle(outgoing, options)
    except Err as e:
        if body is not None:
            _drop(body)
        raise _failure(req, e.value) from None

    # The body goes out while the host sends the request. A write that fails
    # means the request failed: the response's error says why.
    body_failure: Optional[HttpError] = None
    if body is not None:
        try:
            with body.write() as out:
                data = req.body or b""
                for i in range(0, len(data), _WRITE_CHUNK):
                    out.blocking_write_and_flush(data[i : i + _WRITE_CHUNK])
        except Err as e:
            _drop(body)
            body_failure = _stream_failure(req, e.value, "sending the body")
        else:
            try:
                _types.OutgoingBody.finish(body, None)
            except Err as e:
                body_failure = _failure(req, e.value, "sending the body")

    with future:
        with future.subscribe() as ready:
            ready.block()
        got = future.get()
        if got is None or isinstance(got, Err):
            raise HttpError("permanent", _message(req, "no response"))
        result = got.value
        if isinstance(result, Err):
            raise _failure(req, result.value)
        if body_failure is not None:
            raise body_failure
        with result.value as response:
            status = response.status()
            with response.headers() as headers:
                entries = headers.entries()
            with response.consume() as incoming:
                with incoming.stream() as stream:
                    data = _read(req, stream, max_bytes)
    return Response(status, [(k, v.decode("utf-8", errors="replace")) for k, v in entries], data)


def _read(req: Request, stream: Any, max_bytes: int) -> bytes:
    chunks = []
    total = 0
    while True:
        try:
            chunk = stream.blocking_read(min(_READ_CHUNK, max_bytes - total + 1))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                return b"".join(chunks)
            raise _stream_failure(req, e.value, "reading the body") from None
        total += len(chunk)
        if total > max_bytes:
            raise _too_long(req, max_bytes)
        chunks.append(chunk)


def _stream_failure(req: Request, error: Any, doing: str) -> HttpError:
    if isinstance(error, streams.StreamError_Closed):
        return HttpError("permanent", _message(req, "the stream closed", doing))
    # last-operation-failed(io error): wasi:http says what it was, if it knows.
    io_error = error.value
    code = _types.http_error_code(io_error)
    if code is not None:
        return _failure(req, code, doing)
    return HttpError("permanent", _message(req, io_error.to_debug_string(), doing))
