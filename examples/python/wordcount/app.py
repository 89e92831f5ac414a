"""Counts words: {"text": "the cat saw the dog", "top": 2} ->
{"words": 5, "unique": 4, "top": [["the", 2], ["cat", 1]]}.

Words are runs of letters, digits and apostrophes, compared case-insensitively;
ties in `top` go to the word seen first. Shows the rest of the SDK: it logs,
reports progress once per 10% of the lines, and stops early (as `retryable`,
so a retry can finish the job) once cancellation is requested.
"""

import re
from collections import Counter

from wasmq import TaskError, task

WORD = re.compile(r"[\w']+")


@task
def run(ctx, input):
    if not isinstance(input, dict) or not isinstance(input.get("text"), str):
        raise TaskError.invalid_input("`text` must be a string")
    top = input.get("top", 10)
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise TaskError.invalid_input("`top` must be a non-negative integer")

    lines = input["text"].splitlines()
    counts = Counter()
    step = max(1, len(lines) // 10)
    for i, line in enumerate(lines):
        if i % step == 0:
            if ctx.is_cancelled():
                raise TaskError.retryable(f"cancelled after {i} of {len(lines)} lines")
            ctx.progress(100 * i // len(lines), f"line {i} of {len(lines)}")
        counts.update(word.lower() for word in WORD.findall(line))

    total = sum(counts.values())
    ctx.log_info(f"{total} words, {len(counts)} distinct, in {len(lines)} lines")
    ctx.progress(100, "done")
    # sorted() is stable and a Counter keeps first-seen order, so ties go to
    # the word seen first. (Counter.most_common would do, but it imports heapq
    # lazily, and componentize-py bundles only the modules imported while the
    # app loads.)
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return {"words": total, "unique": len(counts), "top": [[w, n] for w, n in ranked]}
