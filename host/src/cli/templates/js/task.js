// The {{name}} task: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}.

import { task, TaskError } from "wasmq-guest";

export const run = task((ctx, input) => {
  const name = input !== null && typeof input === "object" ? input.name : undefined;
  if (typeof name !== "string" || name === "") {
    throw TaskError.invalidInput("`name` must be a non-empty string");
  }
  // Stored with the attempt: `wasmq task show ID` and the dashboard show it.
  ctx.logInfo(`greeting ${name} (attempt ${ctx.attempt})`);
  return { greeting: `Hello, ${name}!` };
});
