// Fan-out: {"numbers": [1, 2, 3]} -> {"total": 12}.
//
// Doubles each number in a child task of its own, running the Rust example
// module `add` on {"a": x, "b": x}, and adds up the children's sums. The first
// run spawns the children and ends at the wait inside `ctx.map`; once they are
// done the task runs again from the start, gets the same children back, and
// finishes. So nothing before the map may differ between runs: it only reads
// the input.

import { task, TaskError } from "../../../guest-sdk/js/wasmq.js";

export const run = task((ctx, input) => {
  const numbers = input !== null && typeof input === "object" ? input.numbers : undefined;
  if (!Array.isArray(numbers) || !numbers.every((n) => typeof n === "number")) {
    throw TaskError.invalidInput("`numbers` must be a list of numbers");
  }
  const sums = ctx.map("add", numbers.map((n) => ({ a: n, b: n })));
  return { total: sums.reduce((total, s) => total + s.sum, 0) };
});
