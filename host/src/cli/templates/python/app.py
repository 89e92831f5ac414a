"""The {{name}} task: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}."""

from wasmq import TaskError, task


@task
def run(ctx, input):
    name = input.get("name") if isinstance(input, dict) else None
    if not isinstance(name, str) or not name:
        raise TaskError.invalid_input("`name` must be a non-empty string")
    # Stored with the attempt: `wasmq task show ID` and the dashboard show it.
    ctx.log_info(f"greeting {name} (attempt {ctx.attempt})")
    return {"greeting": f"Hello, {name}!"}
