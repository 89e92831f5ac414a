// The smallest useful task: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}.
// It is the latency benchmark, so it does nothing but the work: no logging,
// no context lookup.

import { task, TaskError } from "../../../guest-sdk/js/wasmq.js";

export const run = task((_ctx, input) => {
  const name = input !== null && typeof input === "object" ? input.name : undefined;
  if (typeof name !== "string") {
    throw TaskError.invalidInput("`name` must be a string");
  }
  return { greeting: `Hello, ${name}!` };
});
