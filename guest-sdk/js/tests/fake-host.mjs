// Stand-ins for the host's imports, shaped like componentize-js 0.23's
// bindings: records are objects with camelCase fields, u64 values BigInts, a
// result returned by an import is its value or a thrown Error whose
// `payload` is the error, a result inside a list is `{ tag, val }`.
// `fake.calls` records what the SDK hands the host; `fake.replies` scripts
// what comes back.

export const fake = { calls: [], replies: [] };

export class ComponentError extends Error {
  constructor(payload) {
    super(`${payload} (see error.payload)`);
    this.payload = payload;
  }
}

function answer(...call) {
  fake.calls.push(call);
  const reply = fake.replies.shift();
  if (reply instanceof ComponentError) throw reply;
  return reply;
}

export const spawn = (module, input, options) => answer("spawn", module, input, options);
export const spawnMany = (module, inputs, options) => answer("spawnMany", module, inputs, options);
export const wait = (children) => answer("wait", children);
export const map = (module, inputs, options, maxRunning) => answer("map", module, inputs, options, maxRunning);
export const log = () => {};
export const progress = () => {};
export const context = () => ({ taskId: "t", attempt: 1, maxAttempts: 3, queue: "default" });
export const isCancelled = () => false;
// wasi:config/store.
export const get = (key) => answer("get", key);
export const getAll = () => answer("getAll");
