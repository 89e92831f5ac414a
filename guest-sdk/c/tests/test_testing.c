/* The C test context's own test: a task that makes every host call, run
 * under wasmq_testing.c natively; scripts/test.sh compiles and runs it. The
 * input's "mode" picks what the task does. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmq_testing.h"

static char *printf_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *printf_json(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return strdup(buf);
}

bool exports_task_run(task_string_t *input, task_string_t *ret, task_task_error_t *err) {
    char *mode = NULL;
    int found = wasmq_json_get_string(input, "mode", &mode);
    task_string_free(input);
    if (found != 1) return wasmq_fail(err, WASMQ_INVALID_INPUT, "no mode");
    char *out = NULL;
    if (strcmp(mode, "report") == 0) {
        wasmq_task_types_task_context_t ctx;
        wasmq_context(&ctx);
        wasmq_log(WASMQ_WARN, "attempt %u of %u", (unsigned)ctx.attempt, (unsigned)ctx.max_attempts);
        wasmq_log(WASMQ_DEBUG, "%.*s on %.*s", (int)ctx.task_id.len, (const char *)ctx.task_id.ptr,
                  (int)ctx.queue.len, (const char *)ctx.queue.ptr);
        wasmq_progress(-5, "start");
        task_string_t msg;
        task_string_set(&msg, "past the end");
        wasmq_task_host_progress(250, &msg); /* directly: the host clamps */
        out = printf_json("{\"deadline\":%s}", ctx.deadline_unix_ms.is_some ? "true" : "false");
        wasmq_task_types_task_context_free(&ctx);
    } else if (strcmp(mode, "cancel") == 0) {
        int checks = 0;
        while (checks < 5 && !wasmq_is_cancelled()) checks++;
        out = printf_json("%d", checks);
    } else if (strcmp(mode, "fail") == 0) {
        free(mode);
        wasmq_fail(err, WASMQ_RETRYABLE, "try again in %d s", 3);
        err->details.is_some = true;
        task_string_dup(&err->details.val, "{\"after\":3}");
        return false;
    } else if (strcmp(mode, "spawn") == 0) {
        task_string_t module, in;
        task_string_set(&module, "child");
        task_string_set(&in, "{}");
        wasmq_task_subtasks_spawn_options_t options;
        memset(&options, 0, sizeof options);
        wasmq_task_subtasks_child_t child;
        wasmq_task_subtasks_task_error_t spawn_err;
        bool spawned = wasmq_task_subtasks_spawn(&module, &in, &options, &child, &spawn_err);
        wasmq_task_subtasks_child_t children[2];
        task_string_set(&children[0].id, "a");
        children[0].seq = 0;
        task_string_set(&children[1].id, "b");
        children[1].seq = 1;
        wasmq_task_subtasks_list_child_t list = {children, 2};
        wasmq_task_subtasks_list_result_string_task_error_t results;
        wasmq_task_subtasks_wait(&list, &results);
        out = printf_json("{\"spawned\":%s,\"kind\":%d,\"results\":%zu,\"failed\":%s}", spawned ? "true" : "false",
                          (int)spawn_err.kind, results.len,
                          results.len == 2 && results.ptr[0].is_err && results.ptr[1].is_err ? "true" : "false");
        wasmq_task_subtasks_task_error_free(&spawn_err);
        wasmq_task_subtasks_list_result_string_task_error_free(&results);
    } else {
        free(mode);
        return wasmq_fail(err, WASMQ_PERMANENT, "unknown mode");
    }
    free(mode);
    return wasmq_ok(ret, out);
}

static void records_context_logs_and_progress(void) {
    wasmq_test_context ctx = wasmq_test_context_new();
    ctx.attempt = 3;
    ctx.max_attempts = 5;
    ctx.task_id = "t-1";
    ctx.queue = "slow";
    wasmq_test_run run = wasmq_test_run_task(&ctx, "{\"mode\": \"report\"}");
    WASMQ_CHECK(run.ok);
    WASMQ_CHECK_STR(run.output, "{\"deadline\":false}");
    WASMQ_CHECK(run.log_count == 2);
    WASMQ_CHECK_STR(wasmq_test_log_message(&run, 0), "attempt 3 of 5");
    WASMQ_CHECK(run.log_count == 2 && run.logs[0].level == WASMQ_WARN && run.logs[1].level == WASMQ_DEBUG);
    WASMQ_CHECK_STR(wasmq_test_log_message(&run, 1), "t-1 on slow");
    WASMQ_CHECK(wasmq_test_log_message(&run, 2) == NULL);
    WASMQ_CHECK(run.progress_count == 2);
    WASMQ_CHECK(run.progress_count == 2 && run.progress[0].percent == 0 && run.progress[1].percent == 100);
    WASMQ_CHECK(run.progress_count == 2 && strcmp(run.progress[1].message, "past the end") == 0);
    WASMQ_CHECK(run.cancel_checks == 0);
    wasmq_test_run_free(&run);

    /* The defaults, and a deadline. */
    ctx = wasmq_test_context_new();
    ctx.timeout_ms = 1000;
    run = wasmq_test_run_task(&ctx, "{\"mode\": \"report\"}");
    WASMQ_CHECK_STR(run.output, "{\"deadline\":true}");
    WASMQ_CHECK_STR(wasmq_test_log_message(&run, 0), "attempt 1 of 3");
    WASMQ_CHECK_STR(wasmq_test_log_message(&run, 1), "test on default");
    wasmq_test_run_free(&run);
}

static void cancellation(void) {
    wasmq_test_run run = wasmq_test_run_task(NULL, "{\"mode\": \"cancel\"}");
    WASMQ_CHECK_STR(run.output, "5");
    WASMQ_CHECK(run.cancel_checks == 5);
    wasmq_test_run_free(&run);

    wasmq_test_context ctx = wasmq_test_context_new();
    ctx.cancelled_after = 2;
    run = wasmq_test_run_task(&ctx, "{\"mode\": \"cancel\"}");
    WASMQ_CHECK_STR(run.output, "2");
    WASMQ_CHECK(run.cancel_checks == 3);
    wasmq_test_run_free(&run);

    ctx.cancelled_after = 0;
    run = wasmq_test_run_task(&ctx, "{\"mode\": \"cancel\"}");
    WASMQ_CHECK_STR(run.output, "0");
    WASMQ_CHECK(run.cancel_checks == 1);
    wasmq_test_run_free(&run);
}

static void errors(void) {
    wasmq_test_run run = wasmq_test_run_task(NULL, "{\"mode\": \"fail\"}");
    WASMQ_CHECK(!run.ok && run.output == NULL);
    WASMQ_CHECK(run.error_kind == WASMQ_RETRYABLE);
    WASMQ_CHECK_STR(wasmq_test_error_kind_name(run.error_kind), "retryable");
    WASMQ_CHECK_STR(run.error_message, "try again in 3 s");
    WASMQ_CHECK_STR(run.error_details, "{\"after\":3}");
    wasmq_test_run_free(&run);

    run = wasmq_test_run_task(NULL, "[1, 2]");
    WASMQ_CHECK_STR(wasmq_test_error_kind_name(run.error_kind), "invalid-input");
    WASMQ_CHECK(run.error_details == NULL);
    wasmq_test_run_free(&run);
}

static void no_subtasks(void) {
    wasmq_test_run run = wasmq_test_run_task(NULL, "{\"mode\": \"spawn\"}");
    WASMQ_CHECK_STR(run.output, "{\"spawned\":false,\"kind\":0,\"results\":2,\"failed\":true}");
    wasmq_test_run_free(&run);
}

int main(void) {
    records_context_logs_and_progress();
    cancellation();
    errors();
    no_subtasks();
    return wasmq_test_summary("test_testing");
}
