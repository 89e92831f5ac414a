"""Fan-out: {"numbers": [1, 2, 3]} -> {"total": 12}.

Doubles each number in a child task of its own, running the Rust example
module `add` on {"a": x, "b": x}, and adds up the children's sums. The first
run spawns the children and ends at the wait inside `ctx.map`; once they are
done the task runs again from the start, gets the same children back, and
finishes. So nothing before the map may differ between runs: it only reads
the input.
"""

from wasmq import TaskError, task


@task
def run(ctx, input):
    numbers = input.get("numbers") if isinstance(input, dict) else None
    if not isinstance(numbers, list) or not all(
        isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
    ):
        raise TaskError.invalid_input("`numbers` must be a list of numbers")
    sums = ctx.map("add", [{"a": n, "b": n} for n in numbers])
    return {"total": sum(s["sum"] for s in sums)}
