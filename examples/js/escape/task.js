// Tries to reach outside the sandbox and reports what it saw, like the Rust
// `escape` example: one {"ok": bool, "detail": string} per probe, where
// `ok: true` means that escape worked. The task itself succeeds.
//
// A componentize-js task has no file, environment or socket API in the first
// place: StarlingMonkey offers none of Node's `fs`, `process` or `net`. The
// probes try the routes a script would reach for (Node and Deno globals).
//
// The network probe is separate: with {"fetch": "127.0.0.1:5432"} the task
// calls fetch. The component is built with `-d http fetch-event`, so it imports
// no wasi:http and fetch's implementation is a stub that traps: the run ends
// as a `trap` before any connection is attempted.
//
// With {"raise": "message"} it throws new Error(message) instead, to show how an
// uncaught JavaScript error reaches the host.

import { task } from "../../../guest-sdk/js/wasmq.js";

function probe(fn) {
  try {
    return { ok: true, detail: String(fn()) };
  } catch (e) {
    return { ok: false, detail: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
  }
}

function readPasswd() {
  if (typeof globalThis.require === "function") {
    return `read ${globalThis.require("fs").readFileSync("/etc/passwd", "utf8").length} bytes`;
  }
  if (typeof globalThis.Deno?.readTextFileSync === "function") {
    return `read ${globalThis.Deno.readTextFileSync("/etc/passwd").length} bytes`;
  }
  throw new ReferenceError("no file API (require, Deno) in this runtime");
}

function env() {
  const vars = globalThis.process?.env ?? globalThis.Deno?.env?.toObject?.();
  if (vars && Object.keys(vars).length > 0) {
    return `${Object.keys(vars).length} variables visible: ${Object.keys(vars).join(", ")}`;
  }
  throw new ReferenceError("no environment API (process.env, Deno.env) in this runtime");
}

function tcpConnect(addr) {
  // fetch returns a promise, and a synchronous task cannot wait for it; a
  // request that got this far would still be an escape.
  globalThis.fetch(`http://${addr}/`).catch(() => {});
  return `fetch(http://${addr}/) was sent`;
}

export const run = task((ctx, input) => {
  const args = input !== null && typeof input === "object" ? input : {};
  if ("raise" in args) {
    throw new Error(args.raise);
  }
  if (typeof args.fetch === "string") {
    return { tcp_connect: probe(() => tcpConnect(args.fetch)) };
  }
  const report = {
    read_passwd: probe(readPasswd),
    env: probe(env),
  };
  if (Object.values(report).some((p) => p.ok)) {
    ctx.logWarn("at least one escape probe got through the sandbox");
  }
  return report;
});
