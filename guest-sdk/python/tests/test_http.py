"""wasmq.http and Context.config as a component of the world ``http-task``
runs them, natively: stand-ins for the bindings componentize-py 0.25
generates for that world (``wasi_http_types``, ``outgoing_handler``,
``streams``, ``store``, and the task's own ``types`` under the name
``wasmq_task_types``) play a scripted server, and check that every
``wasi`` resource is released once, children before their parents, as
wasmtime requires.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import importlib.util
import json
import sys
import types
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

SDK = Path(__file__).resolve().parents[1]


@dataclass
class Ok:
    value: Any


@dataclass(frozen=True)
class Err(Exception):
    value: Any


# ---- wasi resources ---------------------------------------------------------


class Resource:
    """A handle: released once (``__exit__``, or moved into a call that takes
    ownership), never before its children, never used after."""

    live: List["Resource"] = []

    def __init__(self, parent: Optional["Resource"] = None) -> None:
        self.parent = parent
        self.children = 0
        self.gone = False
        if parent is not None:
            parent.children += 1
        Resource.live.append(self)

    def use(self) -> None:
        assert not self.gone, f"{type(self).__name__} used after it was released"

    def release(self, moved: bool = False) -> None:
        self.use()
        assert self.children == 0, f"{type(self).__name__} released before its {self.children} child(ren)"
        self.gone = True
        if self.parent is not None:
            self.parent.children -= 1
        Resource.live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---- wasi:io ------------------------------------------------------------------


@dataclass
class StreamError_Closed:
    pass


@dataclass
class StreamError_LastOperationFailed:
    value: Any


class IoError(Resource):
    def __init__(self, code: Any, text: str) -> None:
        super().__init__()
        self.code, self.text = code, text

    def to_debug_string(self) -> str:
        return self.text


class Pollable(Resource):
    def block(self) -> None:
        self.use()
        self.parent.ready = True


class InputStream(Resource):
    def __init__(self, parent: Resource, chunks: List[Any]) -> None:
        super().__init__(parent)
        self.chunks = list(chunks)

    def blocking_read(self, n: int) -> bytes:
        self.use()
        assert n > 0
        if not self.chunks:
            raise Err(StreamError_Closed())
        chunk = self.chunks[0]
        if isinstance(chunk, Err):
            raise chunk
        self.chunks[0] = chunk[n:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return chunk[:n]


class OutputStream(Resource):
    def __init__(self, parent: "OutgoingBody") -> None:
        super().__init__(parent)
        self.body = parent

    def blocking_write_and_flush(self, data: bytes) -> None:
        self.use()
        assert len(data) <= 4096, "blocking-write-and-flush takes at most 4096 bytes"
        if net.write_error is not None:
            raise net.write_error
        self.body.sent.chunks.append(bytes(data))


# ---- wasi:http/types --------------------------------------------------------

for _name in ("Get", "Head", "Post", "Put", "Delete", "Connect", "Options", "Trace", "Patch"):
    globals()[f"Method_{_name}"] = dataclass(type(f"Method_{_name}", (), {}))


@dataclass
class Method_Other:
    value: str


@dataclass
class Scheme_Http:
    pass


@dataclass
class Scheme_Https:
    pass


@dataclass
class HeaderError_InvalidSyntax:
    pass


@dataclass
class ErrorCode_InternalError:
    value: Optional[str]


@dataclass
class ErrorCode_ConnectionRefused:
    pass


@dataclass
class ErrorCode_HttpRequestUriInvalid:
    pass


@dataclass
class DnsErrorPayload:
    rcode: Optional[str]
    info_code: Optional[int]


@dataclass
class ErrorCode_DnsError:
    value: DnsErrorPayload


class Fields(Resource):
    def __init__(self, entries: List[Any]) -> None:
        super().__init__()
        self.list = entries

    @classmethod
    def from_list(cls, entries: List[Any]) -> "Fields":
        for name, value in entries:
            assert isinstance(name, str) and isinstance(value, bytes), (name, value)
            if " " in name:
                raise Err(HeaderError_InvalidSyntax())
        return cls(list(entries))

    def entries(self) -> List[Any]:
        self.use()
        return list(self.list)


@dataclass
class Sent:
    """What the fake server received."""

    method: Any = None
    scheme: Any = None
    authority: Optional[str] = None
    path: Optional[str] = None
    headers: List[Any] = field(default_factory=list)
    chunks: List[bytes] = field(default_factory=list)
    finished: bool = False
    body_requested: bool = False
    timeouts: List[Any] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class OutgoingRequest(Resource):
    def __init__(self, headers: Fields) -> None:
        super().__init__()
        headers.release(moved=True)
        self.sent = Sent(headers=headers.list)

    def set_method(self, m: Any) -> None:
        self.use()
        self.sent.method = m

    def set_scheme(self, s: Any) -> None:
        self.use()
        self.sent.scheme = s

    def set_authority(self, a: Optional[str]) -> None:
        self.use()
        if a is not None and " " in a:
            raise Err(None)
        self.sent.authority = a

    def set_path_with_query(self, p: Optional[str]) -> None:
        self.use()
        self.sent.path = p

    def body(self) -> "OutgoingBody":
        self.use()
        assert not self.sent.body_requested, "body() twice"
        self.sent.body_requested = True
        return OutgoingBody(self.sent)


class OutgoingBody(Resource):
    def __init__(self, sent: Sent) -> None:
        super().__init__()
        self.sent = sent

    def write(self) -> OutputStream:
        self.use()
        return OutputStream(self)

    @classmethod
    def finish(cls, this: "OutgoingBody", trailers: Any) -> None:
        this.release(moved=True)
        this.sent.finished = True


class RequestOptions(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.values = {}

    def set_connect_timeout(self, ns: Optional[int]) -> None:
        self.values["connect"] = ns

    def set_first_byte_timeout(self, ns: Optional[int]) -> None:
        self.values["first_byte"] = ns

    def set_between_bytes_timeout(self, ns: Optional[int]) -> None:
        self.values["between_bytes"] = ns


class IncomingBody(Resource):
    def __init__(self, parent: Resource, chunks: List[Any]) -> None:
        super().__init__(parent)
        self.chunks = chunks
        self.streamed = False

    def stream(self) -> InputStream:
        self.use()
        assert not self.streamed
        self.streamed = True
        return InputStream(self, self.chunks)


class IncomingResponse(Resource):
    def __init__(self, status: int, headers: List[Any], chunks: List[Any]) -> None:
        super().__init__()
        self.status_, self.headers_, self.chunks = status, headers, chunks
        self.consumed = False

    def status(self) -> int:
        self.use()
        return self.status_

    def headers(self) -> Fields:
        self.use()
        return Fields(list(self.headers_))

    def consume(self) -> IncomingBody:
        self.use()
        if self.consumed:
            raise Err(None)
        self.consumed = True
        return IncomingBody(self, self.chunks)


class FutureIncomingResponse(Resource):
    def __init__(self, reply: Any) -> None:
        super().__init__()
        self.reply = reply
        self.ready = False
        self.taken = False

    def subscribe(self) -> Pollable:
        self.use()
        return Pollable(self)

    def get(self) -> Any:
        self.use()
        if not self.ready:
            return None
        if self.taken:
            return Err(None)
        self.taken = True
        if isinstance(self.reply, tuple):
            status, headers, chunks = self.reply
            return Ok(Ok(IncomingResponse(status, [(k, v.encode()) for k, v in headers], chunks)))
        return Ok(Err(self.reply))


def http_error_code(err: IoError) -> Any:
    return err.code


class Net:
    """The scripted server: `reply` is `(status, headers, body chunks)` (a
    chunk may be an `Err` the body stream raises) or an error-code for the
    future; `handle_error` an error-code `handle` raises."""

    def reset(self) -> None:
        self.reply: Any = (200, [], [])
        self.handle_error: Any = None
        self.write_error: Any = None
        self.sent: List[Sent] = []

    def handle(self, request: OutgoingRequest, options: Optional[RequestOptions]) -> FutureIncomingResponse:
        request.release(moved=True)
        if options is not None:
            request.sent.timeouts.append(dict(options.values))
            options.release(moved=True)
        if self.handle_error is not None:
            raise Err(self.handle_error)
        self.sent.append(request.sent)
        return FutureIncomingResponse(self.reply)


net = Net()
net.reset()

# ---- the modules componentize-py generates for world http-task ---------------


def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


_spec = importlib.util.spec_from_file_location("_wasmq_native_http", SDK / "wasmq" / "_native.py")
_native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_native)


@dataclass
class Error_Io:
    value: str


class FakeStore:
    values: dict = {}
    error: Any = None

    @classmethod
    def get(cls, key: str) -> Optional[str]:
        if cls.error is not None:
            raise Err(cls.error)
        return cls.values.get(key)


def _bindings() -> dict:
    http_types = _module(
        "wit_world.imports.wasi_http_types",
        Fields=Fields,
        OutgoingRequest=OutgoingRequest,
        OutgoingBody=OutgoingBody,
        RequestOptions=RequestOptions,
        Scheme_Http=Scheme_Http,
        Scheme_Https=Scheme_Https,
        http_error_code=http_error_code,
        **{k: v for k, v in globals().items() if k.startswith("Method_")},
    )
    task_types = _module(
        "wit_world.imports.wasmq_task_types",
        ErrorKind=_native.ErrorKind,
        LogLevel=_native.LogLevel,
        TaskError=_native.TaskError,
        TaskContext=_native.TaskContext,
    )
    mods = {
        "componentize_py_types": _module("componentize_py_types", Ok=Ok, Err=Err),
        "wit_world": _module("wit_world"),
        "wit_world.imports.host": _module("wit_world.imports.host"),
        "wit_world.imports.subtasks": _module(
            "wit_world.imports.subtasks", SpawnOptions=_native.SpawnOptions, Child=_native.Child
        ),
        "wit_world.imports.wasmq_task_types": task_types,
        "wit_world.imports.wasi_http_types": http_types,
        "wit_world.imports.outgoing_handler": _module("wit_world.imports.outgoing_handler", handle=net.handle),
        "wit_world.imports.streams": _module(
            "wit_world.imports.streams",
            StreamError_Closed=StreamError_Closed,
            StreamError_LastOperationFailed=StreamError_LastOperationFailed,
        ),
        "wit_world.imports.store": FakeStore,
    }
    imports = _module("wit_world.imports")
    for name, m in mods.items():
        if name.startswith("wit_world.imports."):
            setattr(imports, name.rsplit(".", 1)[1], m)
    mods["wit_world.imports"] = imports
    return mods


def _import_in_component():
    # Import wasmq afresh over these bindings, and leave sys.modules as it was
    # (the other test files import it natively, or over their own stand-ins).
    def take(pred):
        return {k: sys.modules.pop(k) for k in list(sys.modules) if pred(k.split(".")[0])}

    saved = take(lambda top: top in ("wasmq", "wit_world", "componentize_py_types"))
    sys.modules.update(_bindings())
    sys.path.insert(0, str(SDK))
    try:
        import wasmq
        import wasmq.http

        return wasmq, wasmq.http
    finally:
        sys.path.remove(str(SDK))
        take(lambda top: top in ("wasmq", "wit_world", "componentize_py_types"))
        sys.modules.update(saved)


wasmq, http = _import_in_component()
TaskError, HttpError, Response = wasmq.TaskError, http.HttpError, http.Response

REFUSAL = "wasmq: http://127.0.0.1:9/x is not granted to this run (no --allow-http grant matches its scheme, host, port and path)"


class HttpTest(unittest.TestCase):
    def setUp(self) -> None:
        net.reset()
        Resource.live.clear()

    def tearDown(self) -> None:
        self.assertEqual([type(r).__name__ for r in Resource.live], [], "resources left unreleased")

    def test_the_sdk_uses_the_bindings_of_world_http_task(self):
        self.assertFalse(wasmq._NATIVE)
        self.assertEqual(http.outgoing_handler.handle, net.handle)
        self.assertIs(wasmq.wit.ErrorKind, _native.ErrorKind)

    def test_get_sends_the_request_and_reads_the_whole_response(self):
        net.reply = (
            200,
            [("content-type", "application/json"), ("set-cookie", "a=1"), ("Set-Cookie", "b=2")],
            [b'{"items": [1, ', b"2, 3], ", b'"name": "\xc3\xa9"}'],
        )
        r = http.get(
            "https://api.example.com:8443/v1/items?q=1#frag",
            headers={"Authorization": "Bearer t0k3n", "accept": b"application/json"},
        )
        self.assertEqual((r.status, r.ok), (200, True))
        self.assertEqual(r.json(), {"items": [1, 2, 3], "name": "é"})
        self.assertEqual(r.text(), '{"items": [1, 2, 3], "name": "é"}')
        self.assertEqual(r.headers, {"content-type": "application/json", "set-cookie": "a=1, b=2"})
        [sent] = net.sent
        self.assertEqual(sent.method, Method_Get())  # noqa: F821 (made in the loop above)
        self.assertEqual(sent.scheme, Scheme_Https())
        self.assertEqual((sent.authority, sent.path), ("api.example.com:8443", "/v1/items?q=1"))
        self.assertEqual(sent.headers, [("Authorization", b"Bearer t0k3n"), ("accept", b"application/json")])
        self.assertFalse(sent.body_requested, "a GET sends no body")
        self.assertEqual(sent.timeouts, [])

    def test_any_status_is_a_response(self):
        net.reply = (404, [], [b"not found"])
        r = http.get("http://example.com")
        self.assertEqual((r.status, r.ok, r.body), (404, False, b"not found"))
        self.assertEqual(net.sent[0].path, "/")
        self.assertEqual(net.sent[0].scheme, Scheme_Http())
        with self.assertRaises(ValueError):
            r.json()

    def test_post_streams_the_body_in_chunks_and_finishes_it(self):
        value = {"text": "x" * 10_000, "n": [1, 2]}
        r = http.post("http://example.com/items", json=value, timeout=2.5)
        self.assertEqual(r.status, 200)
        [sent] = net.sent
        self.assertEqual(sent.method, Method_Post())  # noqa: F821
        self.assertEqual(json.loads(sent.body), value)
        self.assertEqual([len(c) for c in sent.chunks], [4096, 4096, len(sent.body) - 8192])
        self.assertTrue(sent.finished)
        self.assertIn(("content-type", b"application/json"), sent.headers)
        ns = 2_500_000_000
        self.assertEqual(sent.timeouts, [{"connect": ns, "first_byte": ns, "between_bytes": ns}])
        # Other methods, and a content-type of the caller's own.
        http.request("purge", "http://example.com/", body="x")
        self.assertEqual(net.sent[1].method, Method_Other("PURGE"))
        http.post("http://example.com/", json=[1], headers=[("Content-Type", "application/x+json")])
        self.assertEqual([k for k, _ in net.sent[2].headers], ["Content-Type"])
        with self.assertRaises(TypeError):
            http.post("http://example.com/", body="a", json=1)

    def test_the_hosts_refusal_is_the_error_message(self):
        net.reply = ErrorCode_InternalError(REFUSAL)
        with self.assertRaises(HttpError) as caught:
            http.get("http://127.0.0.1:9/x", headers={"authorization": "Bearer t"})
        e = caught.exception
        self.assertIsInstance(e, TaskError)
        self.assertEqual((e.kind, e.code), ("permanent", "internal-error"))
        self.assertEqual(e.message, f"GET http://127.0.0.1:9/x: {REFUSAL}")
        self.assertEqual(e.details, {"http_error": "internal-error"})

    def test_a_refused_post_releases_its_body(self):
        net.reply = ErrorCode_InternalError(REFUSAL)
        net.write_error = Err(StreamError_Closed())
        with self.assertRaises(HttpError) as caught:
            http.post("http://127.0.0.1:9/x", body=b"payload")
        self.assertEqual(caught.exception.message, f"POST http://127.0.0.1:9/x: {REFUSAL}")
        net.reset()
        net.handle_error = ErrorCode_HttpRequestUriInvalid()
        with self.assertRaises(HttpError) as caught:
            http.post("http://example.com/", body=b"payload", timeout=1)
        e = caught.exception
        self.assertEqual((e.kind, e.message), ("permanent", "POST http://example.com/: http-request-uri-invalid"))

    def test_connection_failures_are_retryable_and_others_permanent(self):
        net.reply = ErrorCode_ConnectionRefused()
        with self.assertRaises(HttpError) as caught:
            http.get("http://example.com/")
        self.assertEqual((caught.exception.kind, caught.exception.message), ("retryable", "GET http://example.com/: connection-refused"))
        net.reply = ErrorCode_DnsError(DnsErrorPayload("NXDOMAIN", None))
        with self.assertRaises(HttpError) as caught:
            http.get("http://nosuch.example/")
        self.assertEqual(caught.exception.kind, "permanent")
        self.assertEqual(caught.exception.message, "GET http://nosuch.example/: dns-error (rcode='NXDOMAIN')")

    def test_the_body_is_bounded(self):
        net.reply = (200, [], [b"12345", b"67890"])
        self.assertEqual(http.get("http://example.com/", max_bytes=10).body, b"1234567890")
        net.reply = (200, [], [b"12345", b"678901"])
        with self.assertRaises(HttpError) as caught:
            http.get("http://example.com/", max_bytes=10)
        self.assertEqual(caught.exception.kind, "permanent")
        self.assertIn("the response body is over 10 bytes", caught.exception.message)

    def test_a_failure_while_reading_the_body(self):
        cap = "wasmq: the HTTP response bodies of this run went over the cap of 5 bytes"
        net.reply = (200, [], [b"123", Err(StreamError_LastOperationFailed(IoError(ErrorCode_InternalError(cap), "x")))])
        with self.assertRaises(HttpError) as caught:
            http.get("http://example.com/")
        self.assertEqual(caught.exception.message, f"GET http://example.com/: reading the body: {cap}")
        net.reply = (200, [], [Err(StreamError_LastOperationFailed(IoError(None, "broken pipe")))])
        with self.assertRaises(HttpError) as caught:
            http.get("http://example.com/")
        self.assertEqual(caught.exception.message, "GET http://example.com/: reading the body: broken pipe")
        for r in list(Resource.live):  # the io errors, left to the garbage collector
            if isinstance(r, IoError):
                r.release()

    def test_bad_urls_and_headers_fail_before_any_request(self):
        for url, why in [
            ("ftp://example.com/", "only http:// and https:// URLs"),
            ("example.com/x", "only http:// and https:// URLs"),
            ("http:///x", "no host"),
            ("http://user:pw@example.com/", "no host"),
        ]:
            with self.assertRaises(HttpError) as caught:
                http.get(url)
            self.assertIn(why, caught.exception.message)
            self.assertEqual(caught.exception.kind, "permanent")
        with self.assertRaises(HttpError) as caught:
            http.get("http://example.com/", headers={"bad name": "x"})
        self.assertEqual(caught.exception.message, "GET http://example.com/: header refused: invalid-syntax")
        with self.assertRaises(HttpError) as caught:
            http.get("http://exa mple.com/")
        self.assertEqual(caught.exception.message, "GET http://exa mple.com/: invalid host")
        with self.assertRaises(TypeError):
            http.get("http://example.com/", headers={"n": 1})
        self.assertEqual(net.sent, [])

    def test_a_task_fails_with_the_refusal_as_its_error(self):
        net.reply = ErrorCode_InternalError(REFUSAL)

        def fetch(ctx, input):
            return http.get(input["url"]).json()

        with self.assertRaises(Err) as caught:
            wasmq._run(fetch, '{"url": "http://127.0.0.1:9/x"}')
        error = caught.exception.value
        self.assertEqual(error.kind, _native.ErrorKind.PERMANENT)
        self.assertEqual(error.message, f"GET http://127.0.0.1:9/x: {REFUSAL}")
        self.assertEqual(json.loads(error.details), {"http_error": "internal-error"})


class ConfigTest(unittest.TestCase):
    def tearDown(self) -> None:
        FakeStore.values, FakeStore.error = {}, None

    def test_config_reads_the_store(self):
        FakeStore.values = {"api-token": "t0k3n"}
        ctx = wasmq.Context()
        self.assertEqual(ctx.config("api-token"), "t0k3n")
        self.assertIsNone(ctx.config("other"))
        with self.assertRaises(TypeError):
            ctx.config(1)

    def test_a_store_error_is_retryable(self):
        FakeStore.error = Error_Io("the store is gone")
        with self.assertRaises(TaskError) as caught:
            wasmq.Context().config("k")
        self.assertEqual(caught.exception, TaskError.retryable("reading config key 'k': the store is gone"))


if __name__ == "__main__":
    unittest.main()
