// ctx.config(key) for a task component: import this module once, next to
// wasmq.js, and build with the world `granted-task`:
//
//     import { task } from "wasmq-guest";
//     import "wasmq-guest/config";
//
//     export const run = task((ctx, input) => {
//       const token = ctx.config("api-token");   // undefined when not granted
//       ...
//     });
//
//     componentize-js task.js --wit wit --world-name granted-task ...
//
// It imports `wasi:config/store@0.2.0-draft` and hands it to wasmq.js, which
// cannot import it itself: a component of the plain `task` world has no such
// import, and componentize-js refuses a source that imports what its world
// lacks. A bundler must leave the import to componentize-js (rolldown
// `--external wasi:config/store@0.2.0-draft`). Under wasmq-testing.js the
// import resolves to a stand-in, and TestContext({ config }) gives the values.

import * as store from "wasi:config/store@0.2.0-draft";
import { __private } from "./wasmq.js";

__private.useConfigStore(store);
