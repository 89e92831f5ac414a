// Resolves the host's interfaces (`wasmq:task/...`, and `wasi:config/store`
// for wasmq-config.js) to fake-host.mjs.
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("wasmq:task/") || specifier.startsWith("wasi:config/")) {
    return { url: new URL("./fake-host.mjs", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
