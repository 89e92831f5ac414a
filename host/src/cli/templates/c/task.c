/* The {{name}} task: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}. */
#include <stdlib.h>

#include "wasmq.h"

bool exports_task_run(task_string_t *input, task_string_t *ret, task_task_error_t *err) {
    char *name = NULL;
    int found = wasmq_json_get_string(input, "name", &name);
    task_string_free(input);
    if (found != 1 || name[0] == '\0') {
        free(name);
        return wasmq_fail(err, WASMQ_INVALID_INPUT, "`name` must be a non-empty string");
    }
    /* Stored with the attempt: `wasmq task show ID` and the dashboard show it. */
    wasmq_task_types_task_context_t ctx;
    wasmq_context(&ctx);
    wasmq_log(WASMQ_INFO, "greeting %s (attempt %u)", name, (unsigned)ctx.attempt);
    wasmq_task_types_task_context_free(&ctx);

    wasmq_buf greeting = {0};
    wasmq_buf_append(&greeting, "Hello, ");
    wasmq_buf_append(&greeting, name);
    wasmq_buf_append(&greeting, "!");
    wasmq_buf out = {0};
    wasmq_buf_append(&out, "{\"greeting\":");
    wasmq_buf_append_json_string(&out, greeting.data);
    wasmq_buf_append(&out, "}");
    free(greeting.data);
    free(name);
    return wasmq_ok(ret, wasmq_buf_take(&out));
}
