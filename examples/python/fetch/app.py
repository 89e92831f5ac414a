"""Calls a JSON API: {"url": "...", "bearer_secret": "api-token"} ->
{"status": 200, "json": <the parsed body>}.

One GET through wasi:http (``wasmq.http``), with ``Authorization: Bearer
<secret>`` when ``bearer_secret`` names a secret granted to the module (read
with ``ctx.config``). A status outside 2xx, or a body that is not JSON, fails
the task; a request the host refuses fails it with the host's message. Built
with the world ``http-task`` (``scripts/build-examples.sh python``).
"""

from wasmq import TaskError, http, task


@task
def run(ctx, input):
    url = input.get("url") if isinstance(input, dict) else None
    if not isinstance(url, str):
        raise TaskError.invalid_input("`url` must be a string")
    secret = input.get("bearer_secret")
    headers = {"accept": "application/json"}
    if secret is not None:
        if not isinstance(secret, str):
            raise TaskError.invalid_input("`bearer_secret` must be the name of a granted secret")
        token = ctx.config(secret)
        if token is None:
            raise TaskError.permanent(
                f"secret {secret} is not granted to this module (wasmq module grant NAME --secret {secret})"
            )
        headers["authorization"] = f"Bearer {token}"

    response = http.get(url, headers=headers)
    if not response.ok:
        # A server error or a rate limit may pass; any other status will not.
        transient = response.status >= 500 or response.status == 429
        error = TaskError.retryable if transient else TaskError.permanent
        raise error(f"GET {url}: status {response.status}", {"status": response.status, "body": response.text()[:200]})
    try:
        body = response.json()
    except ValueError as e:
        raise TaskError.permanent(
            f"GET {url}: the response is not JSON ({response.headers.get('content-type', 'no content-type')}): {e}"
        ) from None
    ctx.log_info(f"GET {url}: {response.status}, {len(response.body)} bytes")
    return {"status": response.status, "json": body}
