// Unit tests of a task without a host: run the task function natively, under
// Node.js, with an input and an attempt of your choosing, and look at what it
// returned, logged and reported.
//
//     // task.test.mjs, run with: node --import ./wasmq-testing.js --test
//     import assert from "node:assert/strict";
//     import { test } from "node:test";
//     import { TestContext } from "./wasmq-testing.js";
//     import { run } from "./task.js";
//
//     test("the second attempt doubles", () => {
//       assert.equal(new TestContext().run(run, { n: 21 }).error().kind, "retryable");
//       const second = new TestContext({ attempt: 2 }).run(run, { n: 21 });
//       assert.equal(second.output(), 42);
//       assert.equal(second.logs[0].message, "doubling 21");
//       assert.equal(second.progress[0].percent, 50);
//       // Through the JSON the host hands over, as the component runs it:
//       assert.equal(new TestContext({ attempt: 2 }).runJson(run, "nope").error().kind, "invalid-input");
//     });
//
// `run` may be the `task(...)` export or the plain function it wraps. For an
// async task, `run` and `runJson` return a promise of the TestRun: `await` it.
//
// What the operator would grant comes from the TestContext: `config` gives the
// values ctx.config returns (task.js must import wasmq-config.js, as in the
// component), and `fetch` answers the task's fetch calls during the run:
//
//     const run = await new TestContext({
//       config: { "api-token": "t0k3n" },
//       fetch: async (request) => Response.json({ id: 7 }),
//     }).run(task, { url: "https://api.example.com/", bearer_secret: "api-token" });
//     assert.equal(run.requests[0].headers.get("authorization"), "Bearer t0k3n");
//
// During a run the global `fetch` is the TestContext's (without `fetch`, one
// that throws): a unit test never reaches the network.
//
// wasmq.js imports the host's interfaces (`wasmq:task/host@0.1.1`, ...), and
// wasmq-config.js `wasi:config/store`, which only exist inside a component.
// Loading this module first registers a Node.js module hook that resolves
// them, when nothing else does, to a stand-in with no host behind it: hence
// `--import ./wasmq-testing.js`, so
// that it is loaded before task.js. (Without the flag, import task.js
// dynamically after this module: `const { run } = await import("./task.js")`.)
// Subtasks (ctx.spawn, wait, map) need the host: under a TestContext they
// throw a `permanent` TaskError. This module is for Node.js only; task.js
// does not import it, so the component does not carry it.

import { register } from "node:module";

const NO_HOST = `
const none = () => {
  throw new Error("no wasmq host: outside a component, run the task with wasmq-testing.js's TestContext");
};
export const context = none, log = none, progress = none, isCancelled = none;
export const spawn = none, spawnMany = none, wait = none, map = none;
export const get = none, getAll = none;
`;

const HOOK = `
const stub = ${JSON.stringify("data:text/javascript," + encodeURIComponent(NO_HOST))};
export async function resolve(specifier, context, next) {
  if (!specifier.startsWith("wasmq:task/") && !specifier.startsWith("wasi:config/")) {
    return next(specifier, context);
  }
  let resolved;
  try {
    resolved = await next(specifier, context);
  } catch {
    return { url: stub, shortCircuit: true };
  }
  // Node resolves the specifier to itself, then cannot load it: no host.
  return /^(wasmq|wasi):/.test(resolved.url) ? { url: stub, shortCircuit: true } : resolved;
}
`;

register("data:text/javascript," + encodeURIComponent(HOOK));

const { __private, TaskError } = await import("./wasmq.js");

/** What one run of a task under a TestContext did. */
export class TestRun {
  constructor(result, logs, progress, cancelChecks, requests) {
    /** What the task returned (for `runJson`, the JSON text), or the
     * TaskError it failed with. */
    this.result = result;
    /** Its log lines, in order: `{ level, message }`. */
    this.logs = logs;
    /** Its progress reports, in order: `{ percent, message }`, percent
     * clamped to 0..100 as the host clamps it. */
    this.progress = progress;
    /** How many times it asked `ctx.isCancelled()`. */
    this.cancelChecks = cancelChecks;
    /** The requests it fetched, in order, as `Request` objects. */
    this.requests = requests;
  }

  /** True when the task succeeded. */
  get ok() {
    return !(this.result instanceof TaskError);
  }

  /** The task's output; throws an AssertionError-like Error if it failed. */
  output() {
    if (this.result instanceof TaskError) {
      throw new Error(`the task failed: ${this.result.kind}: ${this.result.message}`, { cause: this.result });
    }
    return this.result;
  }

  /** The task's error; throws if it succeeded. */
  error() {
    if (!(this.result instanceof TaskError)) throw new Error("the task succeeded");
    return this.result;
  }
}

/**
 * The attempt a test runs a task as. Options, with their defaults: `taskId`
 * ("test"), `attempt` (1), `maxAttempts` (3), `queue` ("default"),
 * `timeoutMs` (none: a deadline that far from the start of each run),
 * `cancelledAfter` (never: cancellation is requested once the task has
 * checked `ctx.isCancelled()` that many times; 0: from the start), `config`
 * (none: an object of the values ctx.config returns, config values and
 * secrets alike) and `fetch` (none: the function that answers the task's
 * fetch calls: it gets a `Request` and returns a `Response` or its promise).
 */
export class TestContext {
  constructor({ taskId = "test", attempt = 1, maxAttempts = 3, queue = "default", timeoutMs, cancelledAfter, config = {}, fetch } = {}) {
    for (const [key, value] of Object.entries(config ?? {})) {
      if (typeof value !== "string") throw new TypeError(`config ${JSON.stringify(key)}: the value must be a string`);
    }
    config = { ...config };
    Object.assign(this, { taskId, attempt, maxAttempts, queue, timeoutMs, cancelledAfter, config, fetch });
  }

  /** Runs `task(ctx, input)` with `input` as a JavaScript value. A TaskError
   * it throws is the run's `result`; anything else is rethrown, so the test
   * shows it. An async task's run is a promise of the TestRun. */
  run(task, input) {
    const fn = __private.taskFunction(task);
    return this.#record((ctx) => fn(ctx, input));
  }

  /** Runs `task` on JSON text exactly as the exported component does: the
   * input is parsed (a failure is an `invalid-input` error and the task is
   * not called), anything thrown becomes a `permanent` error, and the output
   * is serialised to JSON text, the run's `result`. */
  runJson(task, input) {
    const fn = __private.taskFunction(task);
    return this.#record((ctx) => __private.runJson(fn, ctx, input));
  }

  #record(f) {
    const logs = [];
    const progress = [];
    const requests = [];
    let cancelChecks = 0;
    const cancelledAfter = this.cancelledAfter;
    const config = this.config;
    const recorder = {
      log: (level, message) => void logs.push({ level, message }),
      progress: (percent, message) => void progress.push({ percent, message }),
      isCancelled: () => {
        const checked = cancelChecks++;
        return cancelledAfter !== undefined && cancelledAfter !== null && checked >= cancelledAfter;
      },
      config: (key) => (Object.hasOwn(config, key) ? config[key] : undefined),
    };
    const info = {
      taskId: this.taskId,
      attempt: this.attempt,
      maxAttempts: this.maxAttempts,
      queue: this.queue,
      deadlineUnixMs: this.timeoutMs === undefined ? undefined : BigInt(Date.now() + this.timeoutMs),
    };
    const ctx = __private.nativeContext(info, recorder);
    const answer = this.fetch;
    const realFetch = globalThis.fetch;
    globalThis.fetch = async (resource, init) => {
      const request = new Request(resource, init);
      requests.push(request);
      if (answer === undefined || answer === null) {
        throw new TypeError(
          `fetch ${request.url}: no network in a unit test: give TestContext({ fetch }) a function that answers requests`,
        );
      }
      return answer(request.clone());
    };
    const restore = () => {
      globalThis.fetch = realFetch;
    };
    const finish = (result) => new TestRun(result, logs, progress, cancelChecks, requests);
    let out;
    try {
      out = f(ctx);
    } catch (e) {
      restore();
      if (!(e instanceof TaskError)) throw e;
      return finish(e);
    }
    if (!__private.isThenable(out)) {
      restore();
      return finish(out);
    }
    return Promise.resolve(out).then(
      (result) => {
        restore();
        return finish(result);
      },
      (e) => {
        restore();
        if (!(e instanceof TaskError)) throw e;
        return finish(e);
      },
    );
  }
}

export { TaskError };
