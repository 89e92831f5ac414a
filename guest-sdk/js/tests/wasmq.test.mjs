// Unit tests of the wasmq JavaScript SDK, run natively by Node (no host, no
// WebAssembly), against the stand-ins of fake-host.mjs:
//
//     node --import ./guest-sdk/js/tests/register.mjs --test guest-sdk/js/tests/

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { Context, TaskError, task } from "../wasmq.js";
import { ComponentError, fake } from "./fake-host.mjs";

const ctx = new Context();
const werr = (kind, message, details) => ({ kind, message, details });

beforeEach(() => {
  fake.calls = [];
  fake.replies = [];
});

test("spawn serialises the input like an output and inherits every option", () => {
  fake.replies = [{ id: "c0", seq: 0 }];
  assert.deepEqual(ctx.spawn("add", { a: 1, b: "é" }), { id: "c0", seq: 0 });
  assert.deepEqual(fake.calls, [["spawn", "add", '{"a":1,"b":"é"}', {}]]);
});

test("spawn options, u64 ones as BigInts", () => {
  fake.replies = [{ id: "c0", seq: 0 }];
  ctx.spawn("add@1.0.0", [1], {
    queue: "fast",
    priority: -5,
    maxAttempts: 3,
    fuel: 0,
    memoryBytes: 2n ** 40n,
    timeoutMs: 500,
  });
  assert.deepEqual(fake.calls[0][3], {
    queue: "fast",
    priority: -5,
    maxAttempts: 3,
    fuel: 0n,
    memoryBytes: 2n ** 40n,
    timeoutMs: 500n,
  });
});

test("bad options are the caller's mistake and reach no host", () => {
  for (const [options, error] of [
    [{ prio: 1 }, TypeError],
    [{ priority: "high" }, TypeError],
    [{ priority: 1.5 }, TypeError],
    [{ priority: 2 ** 15 }, RangeError],
    [{ maxAttempts: -1 }, RangeError],
    [{ fuel: 2n ** 64n }, RangeError],
    [{ queue: 3 }, TypeError],
  ]) {
    assert.throws(() => ctx.spawn("add", {}, options), error, JSON.stringify(Object.keys(options)));
  }
  assert.throws(() => ctx.map("add", [], { maxRunning: -1 }), RangeError);
  assert.deepEqual(fake.calls, []);
});

test("an input with no JSON form fails permanently before any spawn", () => {
  assert.throws(
    () => ctx.spawnMany("add", [{ a: 1 }, undefined]),
    (e) => e instanceof TaskError && e.kind === "permanent" && e.message.startsWith("subtask input 1 could not be serialized"),
  );
  assert.throws(() => ctx.spawn("add", { n: 1n }), TaskError);
  assert.deepEqual(fake.calls, []);
});

test("a refused spawn throws the host's error", () => {
  fake.replies = [new ComponentError(werr("permanent", "too many children", '{"max":10}'))];
  assert.throws(
    () => ctx.spawnMany("add", [1, 2], { fuel: 5 }),
    (e) => e instanceof TaskError && e.kind === "permanent" && e.message === "too many children" && e.details.max === 10,
  );
  assert.deepEqual(fake.calls, [["spawnMany", "add", ["1", "2"], { fuel: 5n }]]);
});

test("wait returns outputs and errors in order", () => {
  const children = [{ id: "a", seq: 0 }, { id: "b", seq: 1 }, { id: "c", seq: 2 }];
  fake.replies = [
    [
      { tag: "ok", val: '{"sum":2}' },
      { tag: "err", val: werr("retryable", "failed: upstream 503", '{"status":503}') },
      { tag: "err", val: werr("permanent", "cancelled: by request", "not json") },
    ],
  ];
  const [ok, retry, cancelled] = ctx.wait(children);
  assert.deepEqual(fake.calls, [["wait", children]]);
  assert.deepEqual(ok, { sum: 2 });
  assert.ok(retry instanceof TaskError);
  assert.deepEqual([retry.kind, retry.message, retry.details], ["retryable", "failed: upstream 503", { status: 503 }]);
  assert.deepEqual([cancelled.kind, cancelled.details], ["permanent", "not json"]);
});

test("wait takes children only", () => {
  assert.throws(() => ctx.wait(["a"]), TypeError);
  assert.deepEqual(fake.calls, []);
});

test("an output that is not JSON is a permanent error", () => {
  fake.replies = [[{ tag: "ok", val: "{oops" }]];
  const [r] = ctx.wait([{ id: "a", seq: 0 }]);
  assert.ok(r instanceof TaskError && r.kind === "permanent" && r.message.startsWith("subtask output is not JSON"));
});

test("map returns outputs in order", () => {
  fake.replies = [[{ tag: "ok", val: '{"sum":2}' }, { tag: "ok", val: '{"sum":4}' }]];
  const out = ctx.map("add", [{ a: 1, b: 1 }, { a: 2, b: 2 }], { maxRunning: 1, queue: "q" });
  assert.deepEqual(out, [{ sum: 2 }, { sum: 4 }]);
  assert.deepEqual(fake.calls, [["map", "add", ['{"a":1,"b":1}', '{"a":2,"b":2}'], { queue: "q" }, 1]]);
  fake.replies = [[]];
  assert.deepEqual(ctx.map("add", []), []);
  assert.equal(fake.calls[1][4], undefined);
});

test("map throws the first failed child's error, or the host's", () => {
  fake.replies = [
    [
      { tag: "ok", val: "1" },
      { tag: "err", val: werr("invalid-input", "failed: bad a") },
      { tag: "err", val: werr("permanent", "failed: second") },
    ],
  ];
  assert.throws(() => ctx.map("add", [1, 2, 3]), (e) => e instanceof TaskError && e.kind === "invalid-input" && e.message === "failed: bad a");
  fake.replies = [new ComponentError(werr("permanent", "non-deterministic: spawn 0"))];
  assert.throws(() => ctx.map("add", [1]), (e) => e instanceof TaskError && e.message === "non-deterministic: spawn 0");
});

test("a child's error thrown by the task reaches the host as it came", () => {
  fake.replies = [[{ tag: "err", val: werr("retryable", "failed: x", '{"k":[1,"é"]}') }]];
  const run = task((c, input) => c.map("add", input));
  assert.throws(() => run("[1]"), (e) => {
    assert.deepEqual(e, { kind: "retryable", message: "failed: x", details: '{"k":[1,"é"]}' });
    return true;
  });
});

test("an async task's run returns a promise of its JSON, or rejects with the WIT error", async () => {
  const run = task(async (c, input) => {
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (input.fail === "task") throw TaskError.retryable("try later", { after: 5 });
    if (input.fail === "other") throw new RangeError("too far");
    if (input.fail === "output") return undefined;
    return { got: input.n * 2 };
  });
  const ok = run('{"n": 21}');
  assert.ok(ok instanceof Promise);
  assert.equal(await ok, '{"got":42}');
  await assert.rejects(run('{"fail": "task"}'), (e) => {
    assert.deepEqual(e, { kind: "retryable", message: "try later", details: '{"after":5}' });
    return true;
  });
  await assert.rejects(run('{"fail": "other"}'), (e) => {
    assert.equal(e.kind, "permanent");
    assert.equal(e.message, "RangeError: too far");
    assert.match(JSON.parse(e.details).stack, /too far/);
    return true;
  });
  await assert.rejects(run('{"fail": "output"}'), (e) => e.kind === "permanent" && /could not be serialized/.test(e.message));
  // Input that does not parse fails before the function, synchronously.
  assert.throws(() => run("nope"), (e) => e.kind === "invalid-input");
});

test("ctx.config without wasmq-config.js says how to get it", () => {
  assert.throws(
    () => ctx.config("api-token"),
    (e) =>
      e instanceof TaskError &&
      e.kind === "permanent" &&
      e.message.includes("wasmq-config.js") &&
      e.message.includes("granted-task"),
  );
  // A task that calls it fails with that error, not a trap.
  const run = task((c) => c.config("api-token"));
  assert.throws(() => run("null"), (e) => e.kind === "permanent" && e.message.includes("granted-task"));
  assert.deepEqual(fake.calls, []);
});

test("ctx.config reads wasi:config/store once wasmq-config.js is imported", async () => {
  await import("../wasmq-config.js");
  fake.replies = ["t0k3n", undefined, new ComponentError({ tag: "io", val: "the store is gone" })];
  assert.equal(ctx.config("api-token"), "t0k3n");
  assert.equal(ctx.config("nope"), undefined);
  assert.throws(
    () => ctx.config("broken"),
    (e) => e instanceof TaskError && e.kind === "retryable" && e.message === 'reading config key "broken": the store is gone',
  );
  assert.deepEqual(fake.calls, [["get", "api-token"], ["get", "nope"], ["get", "broken"]]);
  assert.throws(() => ctx.config(7), TypeError);
});
