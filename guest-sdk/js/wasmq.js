// Write wasmq tasks in JavaScript.
//
// A wasmq task is a WebAssembly component that implements the `task` world of
// the `wasmq:task@0.1.0` WIT package (wit/task.wit): the host hands it its input
// as JSON text and gets JSON text back, or a `task-error` that says whether
// retrying could help. This module hides that plumbing: write one function over
// plain JSON values and export it, wrapped in `task`, as `run`:
//
//     import { task, TaskError } from "../../../guest-sdk/js/wasmq.js";
//
//     export const run = task((ctx, input) => {
//       if (typeof input?.name !== "string") {
//         throw TaskError.invalidInput("`name` must be a string");
//       }
//       ctx.logInfo(`greeting ${input.name} (attempt ${ctx.attempt})`);
//       return { greeting: `Hello, ${input.name}!` };
//     });
//
// and build it with componentize-js (see guest-sdk/js/README.md).
//
// - Input: the JSON text is parsed with JSON.parse and handed to your function.
// - Output: the return value goes through JSON.stringify. A value with no JSON
//   form (undefined, a function) fails the task as `permanent`.
// - Errors: throw a TaskError (TaskError.permanent / retryable / invalidInput)
//   to choose the kind; the host's retry policy keys on it. Anything else
//   thrown becomes a `permanent` task error whose message is JavaScript's own
//   (`TypeError: Cannot read properties of null (reading 'x')`), with the
//   stack in its details (and on stderr). It is not a trap: a thrown error is
//   a normal failure of the task.
// - Host services: the Context gives the task's id, attempt, queue and
//   deadline, sends logs and progress to the host, and reports cancellation.

import * as host from "wasmq:task/host@0.1.0";

const KINDS = ["permanent", "retryable", "invalid-input"];
const LEVELS = ["trace", "debug", "info", "warn", "error"];

/** A task failure: a kind that drives the retry policy, a message, and
 * optional machine-readable details (any JSON-serialisable value). */
export class TaskError extends Error {
  constructor(kind, message, details) {
    if (!KINDS.includes(kind)) {
      throw new TypeError(`unknown task error kind ${JSON.stringify(kind)}: expected one of ${KINDS.join(", ")}`);
    }
    super(message);
    this.name = "TaskError";
    this.kind = kind;
    this.details = details;
  }

  /** The task will fail the same way again; the host does not retry. */
  static permanent(message, details) {
    return new TaskError("permanent", message, details);
  }

  /** A transient failure; the host retries while attempts remain. */
  static retryable(message, details) {
    return new TaskError("retryable", message, details);
  }

  /** The input is wrong; the host does not retry. */
  static invalidInput(message, details) {
    return new TaskError("invalid-input", message, details);
  }

  /** The WIT `task-error` record, as componentize-js expects it thrown. */
  toWit() {
    let details;
    if (this.details !== undefined) {
      try {
        details = JSON.stringify(this.details);
      } catch (e) {
        // Never lose the error itself over its details.
        details = JSON.stringify(`details could not be serialized: ${e}`);
      }
    }
    return { kind: this.kind, message: String(this.message), details };
  }
}

/** The running attempt's view of the host. The task's identity is fetched
 * from the host on first use only. */
export class Context {
  #info;

  #get() {
    if (this.#info === undefined) this.#info = host.context();
    return this.#info;
  }

  /** The task's id: a UUID for queued tasks, `local` under `wasmq run`. */
  get taskId() {
    return this.#get().taskId;
  }
  /** This attempt's number, starting at 1. */
  get attempt() {
    return this.#get().attempt;
  }
  /** How many attempts the task gets in total. */
  get maxAttempts() {
    return this.#get().maxAttempts;
  }
  /** True when a failure now will not be retried. */
  get isLastAttempt() {
    return this.attempt >= this.maxAttempts;
  }
  /** The queue the task was taken from. */
  get queue() {
    return this.#get().queue;
  }
  /** This attempt's deadline in milliseconds since the Unix epoch, or undefined. */
  get deadlineUnixMs() {
    const ms = this.#get().deadlineUnixMs;
    return ms === undefined || ms === null ? undefined : Number(ms);
  }
  /** Milliseconds left until the deadline: undefined without one, 0 once passed. */
  timeRemainingMs() {
    const deadline = this.deadlineUnixMs;
    return deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
  }

  /** Writes a log line (level: "trace" | "debug" | "info" | "warn" | "error"). */
  log(level, message) {
    if (!LEVELS.includes(level)) {
      throw new TypeError(`unknown log level ${JSON.stringify(level)}: expected one of ${LEVELS.join(", ")}`);
    }
    host.log(level, String(message));
  }
  logDebug(message) {
    this.log("debug", message);
  }
  logInfo(message) {
    this.log("info", message);
  }
  logWarn(message) {
    this.log("warn", message);
  }
  logError(message) {
    this.log("error", message);
  }

  /** Reports progress; `percent` is clamped to 0..100. */
  progress(percent, message = "") {
    const p = Math.max(0, Math.min(100, Math.trunc(Number(percent) || 0)));
    host.progress(p, String(message));
  }

  /** True once cancellation was requested; a long task checks it now and then. */
  isCancelled() {
    return host.isCancelled();
  }
}

function uncaught(e) {
  if (e instanceof Error) {
    const message = e.message ? `${e.name}: ${e.message}` : e.name;
    console.error(e.stack ? `${message}\n${e.stack}` : message);
    return TaskError.permanent(message, { exception: e.name, stack: e.stack });
  }
  // `throw "text"` or any other value: keep what was thrown as the message.
  const message = typeof e === "string" ? e : `uncaught ${typeof e}: ${safeStringify(e)}`;
  console.error(message);
  return TaskError.permanent(message);
}

function safeStringify(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Wraps `fn(ctx, input)` as the task's `run` export: `export const run = task(fn)`. */
export function task(fn) {
  return function run(text) {
    let input;
    try {
      input = JSON.parse(text);
    } catch (e) {
      throw TaskError.invalidInput(`invalid input: ${e.message}`).toWit();
    }
    let output;
    try {
      output = fn(new Context(), input);
    } catch (e) {
      throw (e instanceof TaskError ? e : uncaught(e)).toWit();
    }
    let json;
    try {
      json = JSON.stringify(output);
    } catch (e) {
      throw TaskError.permanent(`task output could not be serialized: ${e.message}`).toWit();
    }
    if (json === undefined) {
      throw TaskError.permanent(`task output could not be serialized: ${typeof output} has no JSON form`).toWit();
    }
    return json;
  };
}
