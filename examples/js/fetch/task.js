// Calls a JSON API: {"url": "...", "bearer_secret": "api-token"} ->
// {"status": 200, "json": <the parsed body>}.
//
// One GET with StarlingMonkey's `fetch` (on wasi:http), with
// `Authorization: Bearer <secret>` when `bearer_secret` names a secret granted
// to the module (read with ctx.config, which wasmq-config.js provides). A
// status outside 2xx, or a body that is not JSON, fails the task. Built with
// the world `granted-task` and without `-d http` (scripts/build-examples.sh
// js): the component imports wasi:http, so it runs only where the operator
// granted some URL.

import { task, TaskError } from "../../../guest-sdk/js/wasmq.js";
import "../../../guest-sdk/js/wasmq-config.js";

export const run = task(async (ctx, input) => {
  const url = input !== null && typeof input === "object" ? input.url : undefined;
  if (typeof url !== "string") throw TaskError.invalidInput("`url` must be a string");
  const secret = input.bearer_secret;
  const headers = { accept: "application/json" };
  if (secret !== undefined && secret !== null) {
    if (typeof secret !== "string") {
      throw TaskError.invalidInput("`bearer_secret` must be the name of a granted secret");
    }
    const token = ctx.config(secret);
    if (token === undefined) {
      throw TaskError.permanent(
        `secret ${secret} is not granted to this module (wasmq module grant NAME --secret ${secret})`,
      );
    }
    headers.authorization = `Bearer ${token}`;
  }

  let response;
  try {
    response = await fetch(url, { headers });
  } catch (e) {
    // StarlingMonkey reports every wasi:http failure, the host's refusal of
    // an ungranted URL included, as the same NetworkError: the worker's log
    // has the host's reason.
    throw TaskError.permanent(
      `GET ${url}: ${e?.message ?? e} (refused by the host, or the request failed: see the worker's log)`,
    );
  }
  const text = await response.text();
  if (!response.ok) {
    // A server error or a rate limit may pass; any other status will not.
    const transient = response.status >= 500 || response.status === 429;
    throw TaskError[transient ? "retryable" : "permanent"](`GET ${url}: status ${response.status}`, {
      status: response.status,
      body: text.slice(0, 200),
    });
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch (e) {
    const type = response.headers.get("content-type") ?? "no content-type";
    throw TaskError.permanent(`GET ${url}: the response is not JSON (${type}): ${e.message}`);
  }
  ctx.logInfo(`GET ${url}: ${response.status}, ${text.length} characters`);
  return { status: response.status, json };
});
