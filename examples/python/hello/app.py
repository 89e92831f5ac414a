"""The smallest useful task: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}.

It is the latency benchmark, so it does nothing but the work: no logging, no
context lookup.
"""

from wasmq import TaskError, task


@task
def run(ctx, input):
    name = input.get("name") if isinstance(input, dict) else None
    if not isinstance(name, str):
        raise TaskError.invalid_input("`name` must be a string")
    return {"greeting": f"Hello, {name}!"}
