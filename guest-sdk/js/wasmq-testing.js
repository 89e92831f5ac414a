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
// `run` may be the `task(...)` export or the plain function it wraps.
//
// wasmq.js imports the host's interfaces (`wasmq:task/host@0.1.1`, ...),
// which only exist inside a component. Loading this module first registers a
// Node.js module hook that resolves them, when nothing else does, to a
// stand-in with no host behind it: hence `--import ./wasmq-testing.js`, so
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
`;

const HOOK = `
const stub = ${JSON.stringify("data:text/javascript," + encodeURIComponent(NO_HOST))};
export async function resolve(specifier, context, next) {
  if (!specifier.startsWith("wasmq:task/")) return next(specifier, context);
  let resolved;
  try {
    resolved = await next(specifier, context);
  } catch {
    return { url: stub, shortCircuit: true };
  }
  // Node resolves the specifier to itself, then cannot load it: no host.
  return resolved.url.startsWith("wasmq:") ? { url: stub, shortCircuit: true } : resolved;
}
`;

register("data:text/javascript," + encodeURIComponent(HOOK));

const { __private, TaskError } = await import("./wasmq.js");

/** What one run of a task under a TestContext did. */
export class TestRun {
  constructor(result, logs, progress, cancelChecks) {
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
 * `timeoutMs` (none: a deadline that far from the start of each run) and
 * `cancelledAfter` (never: cancellation is requested once the task has
 * checked `ctx.isCancelled()` that many times; 0: from the start).
 */
export class TestContext {
  constructor({ taskId = "test", attempt = 1, maxAttempts = 3, queue = "default", timeoutMs, cancelledAfter } = {}) {
    Object.assign(this, { taskId, attempt, maxAttempts, queue, timeoutMs, cancelledAfter });
  }

  /** Runs `task(ctx, input)` with `input` as a JavaScript value. A TaskError
   * it throws is the run's `result`; anything else is rethrown, so the test
   * shows it. */
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
    let cancelChecks = 0;
    const cancelledAfter = this.cancelledAfter;
    const recorder = {
      log: (level, message) => void logs.push({ level, message }),
      progress: (percent, message) => void progress.push({ percent, message }),
      isCancelled: () => {
        const checked = cancelChecks++;
        return cancelledAfter !== undefined && cancelledAfter !== null && checked >= cancelledAfter;
      },
    };
    const info = {
      taskId: this.taskId,
      attempt: this.attempt,
      maxAttempts: this.maxAttempts,
      queue: this.queue,
      deadlineUnixMs: this.timeoutMs === undefined ? undefined : BigInt(Date.now() + this.timeoutMs),
    };
    const ctx = __private.nativeContext(info, recorder);
    let result;
    try {
      result = f(ctx);
    } catch (e) {
      if (!(e instanceof TaskError)) throw e;
      result = e;
    }
    return new TestRun(result, logs, progress, cancelChecks);
  }
}

export { TaskError };
