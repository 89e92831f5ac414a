// Resolves the host's interfaces (`wasmq:task/...`) to fake-host.mjs.
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("wasmq:task/")) {
    return { url: new URL("./fake-host.mjs", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
