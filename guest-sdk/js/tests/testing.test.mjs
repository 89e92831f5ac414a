// wasmq-testing.js: a task function run natively, as the component would run
// it, with what it sent to the host recorded. Runs with or without the fake
// host of register.mjs:
//
//     node --test guest-sdk/js/tests/testing.test.mjs

import assert from "node:assert/strict";
import { test } from "node:test";

import { TaskError, TestContext } from "../wasmq-testing.js";

const { task } = await import("../wasmq.js");

function work(ctx, input) {
  let done = 0;
  for (let i = 0; i < input.items; i++) {
    if (ctx.isCancelled()) throw TaskError.permanent(`cancelled after ${done}`);
    done += 1;
    ctx.progress(Math.floor((100 * (i + 1)) / input.items), `item ${i}`);
  }
  ctx.log("warn", "done");
  return { done, attempt: ctx.attempt, task: ctx.taskId, queue: ctx.queue, last: ctx.isLastAttempt };
}

const flaky = task((ctx, n) => {
  if (ctx.attempt < 2) throw TaskError.retryable("the first attempt always fails");
  ctx.progress(50, "halfway");
  ctx.logInfo(`doubling ${n}`);
  return n * 2;
});

test("records logs, progress and identity", () => {
  const run = new TestContext({ taskId: "t-1", queue: "reports", attempt: 3, maxAttempts: 3 }).run(work, { items: 2 });
  assert.deepEqual(run.output(), { done: 2, attempt: 3, task: "t-1", queue: "reports", last: true });
  assert.deepEqual(run.progress, [
    { percent: 50, message: "item 0" },
    { percent: 100, message: "item 1" },
  ]);
  assert.deepEqual(run.logs, [{ level: "warn", message: "done" }]);
  assert.equal(run.cancelChecks, 2);
});

test("defaults", () => {
  const out = new TestContext().run(work, { items: 0 }).output();
  assert.deepEqual([out.task, out.attempt, out.queue, out.last], ["test", 1, "default", false]);
});

test("cancellation after some checks", () => {
  const run = new TestContext({ cancelledAfter: 1 }).run(work, { items: 5 });
  assert.equal(run.error().message, "cancelled after 1");
  assert.equal(run.error().kind, "permanent");
  assert.equal(run.cancelChecks, 2);
  assert.deepEqual(run.progress, [{ percent: 20, message: "item 0" }]);
  assert.equal(new TestContext({ cancelledAfter: 0 }).run(work, { items: 5 }).error().message, "cancelled after 0");
});

test("the attempt decides, and the task(...) export runs its function", () => {
  assert.equal(new TestContext().run(flaky, 21).error().kind, "retryable");
  const second = new TestContext({ attempt: 2 }).run(flaky, 21);
  assert.equal(second.output(), 42);
  assert.deepEqual(second.logs, [{ level: "info", message: "doubling 21" }]);
  assert.deepEqual(second.progress, [{ percent: 50, message: "halfway" }]);
});

test("runJson goes through the component's path", () => {
  assert.equal(new TestContext({ attempt: 2 }).runJson(flaky, "21").output(), "42");
  assert.equal(new TestContext({ attempt: 2 }).runJson(flaky, "nope").error().kind, "invalid-input");
  const thrown = new TestContext().runJson((ctx) => ctx.nothing.here, "null").error();
  assert.equal(thrown.kind, "permanent");
  assert.match(thrown.message, /^TypeError: /);
  const bad = new TestContext().runJson(() => undefined, "null").error();
  assert.match(bad.message, /could not be serialized/);
});

test("progress is clamped", () => {
  const run = new TestContext().run((ctx) => [ctx.progress(150, "over"), ctx.progress(-3)], null);
  assert.deepEqual(run.progress, [
    { percent: 100, message: "over" },
    { percent: 0, message: "" },
  ]);
});

test("timeoutMs sets a deadline", () => {
  assert.equal(new TestContext().run((ctx) => ctx.timeRemainingMs(), null).output(), undefined);
  const left = new TestContext({ timeoutMs: 30000 }).run((ctx) => ctx.timeRemainingMs(), null).output();
  assert.ok(left > 25000 && left <= 30000, String(left));
});

test("subtasks cannot run natively", () => {
  for (const call of [
    (ctx) => ctx.spawn("child", 1),
    (ctx) => ctx.spawnMany("child", [1]),
    (ctx) => ctx.wait([]),
    (ctx) => ctx.map("child", [1]),
  ]) {
    const err = new TestContext().run(call, null).error();
    assert.equal(err.kind, "permanent");
    assert.match(err.message, /cannot run natively/);
  }
});

test("output() and error() check the outcome", () => {
  assert.throws(() => new TestContext().run(flaky, 1).output(), /the task failed: retryable/);
  assert.throws(() => new TestContext({ attempt: 2 }).run(flaky, 1).error(), /the task succeeded/);
  // Anything but a TaskError thrown by the function reaches the test.
  assert.throws(() => new TestContext().run(() => null.x, null), TypeError);
});

test("config comes from the TestContext, once wasmq-config.js is imported as in the component", async () => {
  const read = (ctx, key) => ctx.config(key) ?? null;
  // Without the import, as in a component built without it.
  const err = new TestContext({ config: { k: "v" } }).run(read, "k").error();
  assert.equal(err.kind, "permanent");
  assert.match(err.message, /wasmq-config\.js.*granted-task/);
  await import("../wasmq-config.js");
  const ctx = new TestContext({ config: { "api-token": "t0k3n" } });
  assert.equal(ctx.run(read, "api-token").output(), "t0k3n");
  assert.equal(ctx.run(read, "other").output(), null);
  assert.equal(ctx.run(read, "toString").output(), null);
  assert.equal(new TestContext().run(read, "api-token").output(), null);
  assert.throws(() => new TestContext({ config: { n: 1 } }), TypeError);
});

const fetchJson = task(async (ctx, input) => {
  const headers = { authorization: `Bearer ${ctx.config(input.secret)}` };
  const response = await fetch(input.url, { headers });
  if (!response.ok) throw TaskError.permanent(`status ${response.status}`);
  ctx.logInfo("fetched");
  return { status: response.status, json: await response.json() };
});

test("an async task under a TestContext: fetch answered by the test, requests recorded", async () => {
  await import("../wasmq-config.js");
  const realFetch = globalThis.fetch;
  const tc = new TestContext({
    config: { token: "t0k3n" },
    fetch: async (request) => {
      assert.equal(request.headers.get("authorization"), "Bearer t0k3n");
      return request.url.endsWith("/missing") ? new Response("no", { status: 404 }) : Response.json({ id: 7 });
    },
  });
  const pending = tc.run(fetchJson, { url: "https://api.example.com/items", secret: "token" });
  assert.ok(pending instanceof Promise);
  const run = await pending;
  assert.deepEqual(run.output(), { status: 200, json: { id: 7 } });
  assert.deepEqual(run.logs, [{ level: "info", message: "fetched" }]);
  assert.deepEqual(
    run.requests.map((r) => [r.method, r.url]),
    [["GET", "https://api.example.com/items"]],
  );
  assert.equal(globalThis.fetch, realFetch, "the global fetch is restored after the run");

  const missing = await tc.run(fetchJson, { url: "https://api.example.com/missing", secret: "token" });
  assert.equal(missing.error().message, "status 404");
  const text = await tc.runJson(fetchJson, '{"url": "https://api.example.com/x", "secret": "token"}');
  assert.equal(text.output(), '{"status":200,"json":{"id":7}}');

  // Without `fetch`, no network: the task's fetch throws.
  const offline = await new TestContext({ config: { token: "t" } }).runJson(fetchJson, '{"url": "https://example.com/", "secret": "token"}');
  assert.equal(offline.error().kind, "permanent");
  assert.match(offline.error().message, /^TypeError: fetch https:\/\/example\.com\/: no network in a unit test/);
  assert.equal(globalThis.fetch, realFetch);
  // Anything but a TaskError thrown by an async function reaches the test.
  await assert.rejects(new TestContext().run(async () => null.x, null), TypeError);
  assert.equal(globalThis.fetch, realFetch);
});
