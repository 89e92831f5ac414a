// Write wasmq tasks in JavaScript.
//
// A wasmq task is a WebAssembly component that implements the `task` world of
// the `wasmq:task@0.1.1` WIT package (wit/task.wit): the host hands it its input
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
// - Async: the function may be `async` (or return a promise): componentize-js
//   runs the event loop until it settles, so a task can `await fetch(...)`
//   (built without `-d http`, see guest-sdk/js/README.md).
// - Grants: ctx.config(key) reads the module's config values and granted
//   secrets through wasi:config/store, once task.js imports wasmq-config.js
//   and the component is built with the world `granted-task`.
// - Subtasks: ctx.spawn, spawnMany, wait and map fan work out to child tasks
//   and collect their results. A wait whose results are not there yet ends
//   the run, and the task runs again *from the start* once they are: all it
//   does before a wait must be deterministic (see Context#spawn).

import * as host from "wasmq:task/host@0.1.1";
import * as subtasks from "wasmq:task/subtasks@0.1.1";

// The key of Context's constructor for native tests (wasmq-testing.js).
const NATIVE = Symbol("wasmq.native");
// Each `task(fn)` wrapper's fn, for wasmq-testing.js.
const TASK_FNS = new WeakMap();

const KINDS = ["permanent", "retryable", "invalid-input"];
const LEVELS = ["trace", "debug", "info", "warn", "error"];

// wasi:config/store, as wasmq-config.js hands it over. This module cannot
// import it: a component built with the world `task` has no such import,
// and componentize-js refuses a source that imports what its world lacks.
let configStore;

const NO_CONFIG =
  "ctx.config() needs wasi:config/store: import the SDK's wasmq-config.js (`import \"wasmq-guest/config\"`) " +
  "in task.js and build the component with the world granted-task (componentize-js --world-name granted-task)";

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
  // Set by wasmq-testing.js: what would go to the host is recorded there.
  #recorder;

  /** A native test's context (wasmq-testing.js): `info` shaped like the
   * host's task context, `recorder` taking what would go to the host. */
  static [NATIVE](info, recorder) {
    const ctx = new Context();
    ctx.#info = info;
    ctx.#recorder = recorder;
    return ctx;
  }

  // Outside a component (a native test) there is no host to spawn on.
  #native() {
    if (this.#recorder !== undefined) {
      throw TaskError.permanent(
        "subtasks need the wasmq host: they cannot run natively (test the parent's logic " +
          "around them, and each child's task on its own)",
      );
    }
  }

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
    if (this.#recorder !== undefined) return this.#recorder.log(level, String(message));
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
    if (this.#recorder !== undefined) return this.#recorder.progress(p, String(message));
    host.progress(p, String(message));
  }

  /** True once cancellation was requested; a long task checks it now and then. */
  isCancelled() {
    if (this.#recorder !== undefined) return this.#recorder.isCancelled();
    return host.isCancelled();
  }

  /**
   * The config value or granted secret `key` of this task's module, read
   * through wasi:config/store; undefined when nothing of that name is set or
   * granted. The operator sets values with `wasmq module config NAME
   * KEY=VALUE` and grants secrets with `wasmq secret set KEY` and `wasmq
   * module grant NAME --secret KEY`; a secret wins over a config value of the
   * same name. The host takes granted secrets back out of the task's output,
   * logs and errors, but a task should not print them.
   *
   * Needs `import "wasmq-guest/config"` (wasmq-config.js) in task.js and the
   * world `granted-task`; without the import it throws a `permanent`
   * TaskError that says so.
   */
  config(key) {
    if (typeof key !== "string") throw new TypeError(`config key must be a string, not ${safeStringify(key)}`);
    if (configStore === undefined) throw TaskError.permanent(NO_CONFIG);
    if (this.#recorder !== undefined) return this.#recorder.config(key);
    let value;
    try {
      value = configStore.get(key);
    } catch (e) {
      // store.error: { tag: "upstream" | "io", val: message }.
      const why = e?.payload?.val ?? e?.payload ?? e;
      throw TaskError.retryable(`reading config key ${JSON.stringify(key)}: ${why}`);
    }
    return value ?? undefined;
  }

  // Subtasks.

  /**
   * Spawns a child task running `module` ("name" or "name@version") on the
   * JSON value `input`, and returns the child, `{ id, seq }`: its task id (the
   * same on every run of this task) and the number of its spawn in the run,
   * from 0. Results come from `wait`.
   *
   * `options`: any of `queue` (string), `priority` (-100..100), `maxAttempts`,
   * `fuel` (0: unlimited), `memoryBytes`, `timeoutMs` (numbers or BigInts);
   * each one left out is inherited from this task.
   *
   * Throws a TaskError when the host refuses the spawn (limits above the
   * worker's, too many children, nesting too deep); left uncaught, it fails
   * this task with the host's error.
   *
   * Determinism: children are durable. When this task is retried, or runs
   * again after a wait, each spawn returns the child it made the first time,
   * matched by the order of the calls. So everything before a wait must do
   * the same on every run: the same spawns, in the same order, with the same
   * modules, inputs and options (no clock, no Math.random in them). A spawn
   * that differs from the first run's fails the task as `permanent`
   * (`non-deterministic`).
   */
  spawn(module, input, options = {}) {
    this.#native();
    const text = childInput(input);
    const opts = spawnOptions(options);
    return hostCall(() => subtasks.spawn(String(module), text, opts));
  }

  /** Spawns one child per JSON value of `inputs`, in order (options as for
   * `spawn`); returns the children. */
  spawnMany(module, inputs, options = {}) {
    this.#native();
    const texts = Array.from(inputs, childInput);
    const opts = spawnOptions(options);
    return hostCall(() => subtasks.spawnMany(String(module), texts, opts));
  }

  /**
   * The results of `children`, in the order given, once all of them are done:
   * for each child its output as a JSON value, or a TaskError *instance*
   * (returned, not thrown) when it failed, ran out of fuel or memory, trapped,
   * timed out or was cancelled; its message starts with the outcome
   * (`failed: …`). Tell them apart with `result instanceof TaskError`.
   *
   * When a result is not there yet, the run ends inside this call (the host
   * stops the instance: no JavaScript runs after it, not even `catch` or
   * `finally` blocks) and the task runs again from the start once the
   * children are done; see `spawn` on determinism.
   */
  wait(children) {
    this.#native();
    const list = Array.from(children, (c) => {
      if (c === null || typeof c !== "object" || typeof c.id !== "string" || !Number.isInteger(c.seq)) {
        throw new TypeError(`wait() takes the children spawn() returned, not ${safeStringify(c)}`);
      }
      return { id: c.id, seq: c.seq };
    });
    return subtasks.wait(list).map(childResult);
  }

  /**
   * Runs `module` on each JSON value of `inputs` as child tasks and returns
   * their outputs, in order, as JSON values: `spawnMany` and `wait` in one
   * call. `options` as for `spawn`, plus `maxRunning`: at most that many of
   * these children unfinished at once.
   *
   * Throws the first failed child's error (in the order of `inputs`) as a
   * TaskError of the same kind and message; use `spawnMany` and `wait` to
   * see every result. Like `wait`, it may end the run and resume it from the
   * start.
   */
  map(module, inputs, options = {}) {
    this.#native();
    const { maxRunning, ...rest } = options ?? {};
    const texts = Array.from(inputs, childInput);
    const max = maxRunning === undefined || maxRunning === null ? undefined : integer("maxRunning", maxRunning, 0, U32);
    const opts = spawnOptions(rest);
    const results = hostCall(() => subtasks.map(String(module), texts, opts, max)).map(childResult);
    const failed = results.find((r) => r instanceof TaskError);
    if (failed !== undefined) throw failed;
    return results;
  }
}

const U32 = 2 ** 32 - 1;
const U64 = 2n ** 64n - 1n;

// spawn-options: each field's range (its WIT type's; the host checks the
// limits); u64 fields cross into the component as BigInts.
const OPTIONS = {
  queue: null,
  priority: [-(2 ** 15), 2 ** 15 - 1],
  maxAttempts: [0, U32],
  fuel: [0n, U64],
  memoryBytes: [0n, U64],
  timeoutMs: [0n, U64],
};

function integer(name, value, low, high) {
  if (!(typeof value === "bigint" || Number.isInteger(value))) {
    throw new TypeError(`${name} must be an integer, not ${safeStringify(value)}`);
  }
  const v = BigInt(value);
  if (v < BigInt(low) || v > BigInt(high)) {
    throw new RangeError(`${name} must be in ${low}..${high}, not ${value}`);
  }
  return typeof low === "bigint" ? v : Number(v);
}

function spawnOptions(options) {
  const out = {};
  for (const [name, value] of Object.entries(options ?? {})) {
    if (!(name in OPTIONS)) {
      throw new TypeError(`unknown spawn option ${JSON.stringify(name)}: expected one of ${Object.keys(OPTIONS).join(", ")}`);
    }
    if (value === undefined || value === null) continue;
    if (OPTIONS[name] === null) {
      if (typeof value !== "string") throw new TypeError(`${name} must be a string, not ${safeStringify(value)}`);
      out[name] = value;
    } else {
      out[name] = integer(name, value, ...OPTIONS[name]);
    }
  }
  return out;
}

// A child's input, serialised like a task's output.
function childInput(value, index) {
  const which = index === undefined ? "subtask input" : `subtask input ${index}`;
  let json;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw TaskError.permanent(`${which} could not be serialized: ${e.message}`);
  }
  if (json === undefined) {
    throw TaskError.permanent(`${which} could not be serialized: ${typeof value} has no JSON form`);
  }
  return json;
}

// The host's `task-error` record as a TaskError. Details are JSON text by
// convention: parsed back into a value, or kept as the string they are.
function fromWit(e) {
  let details = e.details ?? undefined;
  if (details !== undefined) {
    try {
      details = JSON.parse(details);
    } catch {
      // Not JSON: the text itself.
    }
  }
  return new TaskError(e.kind, e.message, details);
}

// An import returning result<_, task-error>: componentize-js throws its error
// as an Error whose `payload` is the record; rethrown as a TaskError.
function hostCall(call) {
  try {
    return call();
  } catch (e) {
    const payload = e?.payload;
    if (payload && KINDS.includes(payload.kind) && typeof payload.message === "string") {
      throw fromWit(payload);
    }
    throw e;
  }
}

// One child's result<string, task-error>: the output parsed, or the error.
function childResult(r) {
  if (r.tag === "err") return fromWit(r.val);
  try {
    return JSON.parse(r.val);
  } catch (e) {
    return TaskError.permanent(`subtask output is not JSON: ${e.message}`);
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

function isThenable(value) {
  return value !== null && (typeof value === "object" || typeof value === "function") && typeof value.then === "function";
}

// What the exported `run` does, with its errors thrown as TaskErrors: also
// what wasmq-testing.js's TestContext#runJson runs natively. For a function
// that returns a promise, a promise of the JSON text that rejects with a
// TaskError.
function runJson(fn, ctx, text) {
  let input;
  try {
    input = JSON.parse(text);
  } catch (e) {
    throw TaskError.invalidInput(`invalid input: ${e.message}`);
  }
  let output;
  try {
    output = fn(ctx, input);
  } catch (e) {
    throw e instanceof TaskError ? e : uncaught(e);
  }
  if (isThenable(output)) {
    return Promise.resolve(output).then(serialize, (e) => {
      throw e instanceof TaskError ? e : uncaught(e);
    });
  }
  return serialize(output);
}

function serialize(output) {
  let json;
  try {
    json = JSON.stringify(output);
  } catch (e) {
    throw TaskError.permanent(`task output could not be serialized: ${e.message}`);
  }
  if (json === undefined) {
    throw TaskError.permanent(`task output could not be serialized: ${typeof output} has no JSON form`);
  }
  return json;
}

/** Wraps `fn(ctx, input)` as the task's `run` export: `export const run = task(fn)`.
 * `fn` may be async: componentize-js settles the promise `run` returns. */
export function task(fn) {
  const run = function run(text) {
    let out;
    try {
      out = runJson(fn, new Context(), text);
    } catch (e) {
      throw e.toWit();
    }
    if (isThenable(out)) {
      return out.then(undefined, (e) => {
        throw e.toWit();
      });
    }
    return out;
  };
  TASK_FNS.set(run, fn);
  return run;
}

/** For wasmq-testing.js only; not part of the SDK's API. */
export const __private = {
  runJson,
  isThenable,
  // wasmq-config.js: the wasi:config/store bindings.
  useConfigStore: (store) => {
    configStore = store;
  },
  nativeContext: (info, recorder) => Context[NATIVE](info, recorder),
  taskFunction: (f) => TASK_FNS.get(f) ?? f,
};
