// Unit tests of the {{name}} task, run natively by Node.js (no host, no
// WebAssembly): npm test, or node --import wasmq-guest/testing --test

import assert from "node:assert/strict";
import { test } from "node:test";

import { TestContext } from "wasmq-guest/testing";
import { run } from "./task.js";

test("greets and logs", () => {
  const result = new TestContext({ attempt: 2 }).run(run, { name: "Ada" });
  assert.deepEqual(result.output(), { greeting: "Hello, Ada!" });
  assert.equal(result.logs[0].message, "greeting Ada (attempt 2)");
});

test("a missing name is invalid input", () => {
  const result = new TestContext().run(run, {});
  assert.equal(result.error().kind, "invalid-input");
});

test("the JSON the host hands over", () => {
  const result = new TestContext().runJson(run, '{"name": "Ada"}');
  assert.equal(result.output(), '{"greeting":"Hello, Ada!"}');
});
