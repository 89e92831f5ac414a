"""Tries to reach outside the sandbox and reports what it saw, like the Rust
`escape` example: one {"ok": bool, "detail": str} per probe, where `ok: true`
means that escape worked. The task itself succeeds; its output is the report.

Input (all optional): {"tcp_addr": "127.0.0.1:5432", "write_path": "/tmp/wasmq-escape"}.
With {"raise": "message"} it raises RuntimeError(message) instead, to show how
an uncaught Python exception reaches the host.
"""

import os
import socket

from wasmq import task


def probe(fn):
    try:
        return {"ok": True, "detail": fn()}
    except Exception as e:  # the refusal is the expected result
        return {"ok": False, "detail": f"{type(e).__name__}: {e}"}


def read_passwd():
    with open("/etc/passwd") as f:
        return f"read {len(f.read().splitlines())} lines"


def list_root():
    return "listed: " + ", ".join(os.listdir("/"))


def env():
    # os.environ (which getenv reads) is filled when the interpreter starts,
    # and componentize-py starts it at build time, with an empty environment.
    # The host's refusal at run time is what the Rust and C probes check.
    names = sorted(os.environ)
    if names:
        return f"{len(names)} variables visible: {', '.join(names)}"
    if os.getenv("HOME") or os.getenv("PATH"):
        return "HOME or PATH visible"
    raise LookupError("no environment variables visible")


def tcp_connect(addr):
    # An address, not a name: the probe is about the connection, and name
    # lookup would need the idna codec, which the component does not carry.
    host, port = addr.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((host, int(port)))
        return f"connected to {addr}"


def write_file(path):
    with open(path, "w") as f:
        f.write("wasmq sandbox escape\n")
    return f"wrote {path}"


@task
def run(ctx, input):
    input = input if isinstance(input, dict) else {}
    if "raise" in input:
        raise RuntimeError(input["raise"])
    addr = input.get("tcp_addr", "127.0.0.1:5432")
    path = input.get("write_path", "/tmp/wasmq-escape")
    report = {
        "read_passwd": probe(read_passwd),
        "list_root": probe(list_root),
        "env": probe(env),
        "tcp_connect": probe(lambda: tcp_connect(addr)),
        "write_file": probe(lambda: write_file(path)),
    }
    if any(p["ok"] for p in report.values()):
        ctx.log_warn("at least one escape probe got through the sandbox")
    return report
