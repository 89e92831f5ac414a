/* A native stand-in for the wasmq host, for unit tests of C tasks; see
 * wasmq_testing.h. Compiled instead of wit-bindgen's task.c: it defines what
 * task.h declares (except the task's own export). */
#include "wasmq_testing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* ---- memory ---- */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static char *copy_n(const uint8_t *s, size_t len) {
    char *out = xmalloc(len + 1);
    if (len) memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

/* ---- the run under way ---- */

static struct {
    bool running;
    wasmq_test_context ctx;
    int64_t deadline_unix_ms; /* < 0: none */
    wasmq_test_run *run;
} current;

static unsigned runs, checks, failures;

static void need_run(const char *call) {
    if (current.running) return;
    fprintf(stderr,
            "wasmq_testing: %s called outside a test run: there is no host; call the task "
            "through wasmq_test_run_task\n",
            call);
    abort();
}

static int64_t now_unix_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

wasmq_test_context wasmq_test_context_new(void) {
    wasmq_test_context ctx = {"test", 1, 3, "default", -1, -1};
    return ctx;
}

wasmq_test_run wasmq_test_run_task(const wasmq_test_context *ctx, const char *input) {
    return wasmq_test_run_fn(ctx, exports_task_run, input);
}

wasmq_test_run wasmq_test_run_fn(const wasmq_test_context *ctx, wasmq_task_fn fn, const char *input) {
    if (current.running) {
        fprintf(stderr, "wasmq_testing: a test run inside a test run\n");
        abort();
    }
    wasmq_test_run run;
    memset(&run, 0, sizeof run);
    current.ctx = ctx ? *ctx : wasmq_test_context_new();
    current.deadline_unix_ms = current.ctx.timeout_ms < 0 ? -1 : now_unix_ms() + current.ctx.timeout_ms;
    current.run = &run;
    current.running = true;

    /* As the bindings call the export: the input is the task's to free. */
    task_string_t in;
    task_string_dup(&in, input);
    task_string_t ret = {NULL, 0};
    task_task_error_t err;
    memset(&err, 0, sizeof err);
    run.ok = fn(&in, &ret, &err);
    if (run.ok) {
        run.output = copy_n(ret.ptr, ret.len);
        task_string_free(&ret);
    } else {
        run.error_kind = (wasmq_error_kind)err.kind;
        run.error_message = copy_n(err.message.ptr, err.message.len);
        if (err.details.is_some) run.error_details = copy_n(err.details.val.ptr, err.details.val.len);
        task_task_error_free(&err);
    }

    current.running = false;
    current.run = NULL;
    runs++;
    return run;
}

void wasmq_test_run_free(wasmq_test_run *run) {
    free(run->output);
    free(run->error_message);
    free(run->error_details);
    for (size_t i = 0; i < run->log_count; i++) free(run->logs[i].message);
    free(run->logs);
    for (size_t i = 0; i < run->progress_count; i++) free(run->progress[i].message);
    free(run->progress);
    memset(run, 0, sizeof *run);
}

const char *wasmq_test_log_message(const wasmq_test_run *run, size_t i) {
    return i < run->log_count ? run->logs[i].message : NULL;
}

const char *wasmq_test_error_kind_name(wasmq_error_kind kind) {
    switch (kind) {
    case WASMQ_PERMANENT: return "permanent";
    case WASMQ_RETRYABLE: return "retryable";
    case WASMQ_INVALID_INPUT: return "invalid-input";
    }
    return "?";
}

/* ---- checks ---- */

bool wasmq_test_check(bool ok, const char *what, const char *file, int line) {
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    }
    return ok;
}

bool wasmq_test_check_str(const char *actual, const char *expected, const char *what, const char *file,
                          int line) {
    bool ok = actual && expected && strcmp(actual, expected) == 0;
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "%s:%d: check failed: %s\n  actual:   %s%s%s\n  expected: %s%s%s\n", file, line, what,
                actual ? "\"" : "", actual ? actual : "NULL", actual ? "\"" : "", expected ? "\"" : "",
                expected ? expected : "NULL", expected ? "\"" : "");
    }
    return ok;
}

int wasmq_test_summary(const char *name) {
    /* Flushed at once: a sanitizer's leak check at exit ends the process
     * without flushing stdout. */
    setvbuf(stdout, NULL, _IONBF, 0);
    if (failures) {
        printf("%s: %u runs, %u checks, %u FAILED\n", name, runs, checks, failures);
        return 1;
    }
    if (!runs || !checks) {
        printf("%s: %u runs, %u checks: nothing was tested\n", name, runs, checks);
        return 1;
    }
    printf("%s: %u runs, %u checks, all passed\n", name, runs, checks);
    return 0;
}

/* ---- the host's imports (interface `host`) ---- */

void wasmq_task_host_log(wasmq_task_host_log_level_t level, task_string_t *message) {
    need_run("log");
    wasmq_test_run *run = current.run;
    run->logs = realloc(run->logs, (run->log_count + 1) * sizeof *run->logs);
    if (!run->logs) abort();
    run->logs[run->log_count].level = (wasmq_log_level)level;
    run->logs[run->log_count].message = copy_n(message->ptr, message->len);
    run->log_count++;
}

void wasmq_task_host_progress(uint8_t percent, task_string_t *message) {
    need_run("progress");
    wasmq_test_run *run = current.run;
    run->progress = realloc(run->progress, (run->progress_count + 1) * sizeof *run->progress);
    if (!run->progress) abort();
    run->progress[run->progress_count].percent = percent > 100 ? 100 : percent;
    run->progress[run->progress_count].message = copy_n(message->ptr, message->len);
    run->progress_count++;
}

void wasmq_task_host_context(wasmq_task_host_task_context_t *ret) {
    need_run("context");
    task_string_dup(&ret->task_id, current.ctx.task_id);
    ret->attempt = current.ctx.attempt;
    ret->max_attempts = current.ctx.max_attempts;
    task_string_dup(&ret->queue, current.ctx.queue);
    ret->deadline_unix_ms.is_some = current.deadline_unix_ms >= 0;
    ret->deadline_unix_ms.val = current.deadline_unix_ms >= 0 ? (uint64_t)current.deadline_unix_ms : 0;
}

bool wasmq_task_host_is_cancelled(void) {
    need_run("is-cancelled");
    unsigned checked = current.run->cancel_checks++;
    return current.ctx.cancelled_after >= 0 && checked >= (unsigned)current.ctx.cancelled_after;
}

/* ---- the host's imports (interface `subtasks`): no host, no children ---- */

static void no_subtasks(wasmq_task_subtasks_task_error_t *err, const char *call) {
    need_run(call);
    err->kind = WASMQ_TASK_TYPES_ERROR_KIND_PERMANENT;
    task_string_dup(&err->message, "subtasks need the wasmq host: under a test context they fail");
    err->details.is_some = false;
}

bool wasmq_task_subtasks_spawn(task_string_t *module, task_string_t *input,
                               wasmq_task_subtasks_spawn_options_t *options, wasmq_task_subtasks_child_t *ret,
                               wasmq_task_subtasks_task_error_t *err) {
    no_subtasks(err, "spawn");
    return false;
}

bool wasmq_task_subtasks_spawn_many(task_string_t *module, task_list_string_t *inputs,
                                    wasmq_task_subtasks_spawn_options_t *options,
                                    wasmq_task_subtasks_list_child_t *ret, wasmq_task_subtasks_task_error_t *err) {
    no_subtasks(err, "spawn-many");
    return false;
}

void wasmq_task_subtasks_wait(wasmq_task_subtasks_list_child_t *children,
                              wasmq_task_subtasks_list_result_string_task_error_t *ret) {
    need_run("wait");
    ret->len = children->len;
    ret->ptr = xmalloc(children->len * sizeof *ret->ptr);
    for (size_t i = 0; i < children->len; i++) {
        ret->ptr[i].is_err = true;
        no_subtasks(&ret->ptr[i].val.err, "wait");
    }
}

bool wasmq_task_subtasks_map(task_string_t *module, task_list_string_t *inputs,
                             wasmq_task_subtasks_spawn_options_t *options, uint32_t *maybe_max_running,
                             wasmq_task_subtasks_list_result_string_task_error_t *ret,
                             wasmq_task_subtasks_task_error_t *err) {
    no_subtasks(err, "map");
    return false;
}

/* ---- the bindings' helpers, as the generated task.c has them ---- */

void task_string_set(task_string_t *ret, const char *s) {
    ret->ptr = (uint8_t *)s;
    ret->len = strlen(s);
}

void task_string_dup(task_string_t *ret, const char *s) { task_string_dup_n(ret, s, strlen(s)); }

void task_string_dup_n(task_string_t *ret, const char *s, size_t len) {
    ret->len = len;
    /* Like cabi_realloc, no allocation for an empty string (which
     * task_string_free does not free). */
    ret->ptr = len ? xmalloc(len) : (uint8_t *)1;
    if (len) memcpy(ret->ptr, s, len);
}

void task_string_free(task_string_t *ret) {
    if (ret->len > 0) free(ret->ptr);
    ret->ptr = NULL;
    ret->len = 0;
}

void task_option_string_free(task_option_string_t *ptr) {
    if (ptr->is_some) task_string_free(&ptr->val);
}

void task_option_u64_free(task_option_u64_t *ptr) {}
void task_option_s16_free(task_option_s16_t *ptr) {}
void task_option_u32_free(task_option_u32_t *ptr) {}

void wasmq_task_types_task_error_free(wasmq_task_types_task_error_t *ptr) {
    task_string_free(&ptr->message);
    task_option_string_free(&ptr->details);
}

void wasmq_task_types_task_context_free(wasmq_task_types_task_context_t *ptr) {
    task_string_free(&ptr->task_id);
    task_string_free(&ptr->queue);
}

void wasmq_task_host_task_context_free(wasmq_task_host_task_context_t *ptr) {
    wasmq_task_types_task_context_free(ptr);
}

void wasmq_task_subtasks_task_error_free(wasmq_task_subtasks_task_error_t *ptr) {
    wasmq_task_types_task_error_free(ptr);
}

void task_task_error_free(task_task_error_t *ptr) { wasmq_task_types_task_error_free(ptr); }

void wasmq_task_subtasks_spawn_options_free(wasmq_task_subtasks_spawn_options_t *ptr) {
    task_option_string_free(&ptr->queue);
}

void wasmq_task_subtasks_child_free(wasmq_task_subtasks_child_t *ptr) { task_string_free(&ptr->id); }

void wasmq_task_subtasks_result_child_task_error_free(wasmq_task_subtasks_result_child_task_error_t *ptr) {
    if (ptr->is_err) wasmq_task_subtasks_task_error_free(&ptr->val.err);
    else wasmq_task_subtasks_child_free(&ptr->val.ok);
}

void task_list_string_free(task_list_string_t *ptr) {
    if (!ptr->len) return;
    for (size_t i = 0; i < ptr->len; i++) task_string_free(&ptr->ptr[i]);
    free(ptr->ptr);
}

void wasmq_task_subtasks_list_child_free(wasmq_task_subtasks_list_child_t *ptr) {
    if (!ptr->len) return;
    for (size_t i = 0; i < ptr->len; i++) wasmq_task_subtasks_child_free(&ptr->ptr[i]);
    free(ptr->ptr);
}

void wasmq_task_subtasks_result_list_child_task_error_free(
    wasmq_task_subtasks_result_list_child_task_error_t *ptr) {
    if (ptr->is_err) wasmq_task_subtasks_task_error_free(&ptr->val.err);
    else wasmq_task_subtasks_list_child_free(&ptr->val.ok);
}

void wasmq_task_subtasks_result_string_task_error_free(wasmq_task_subtasks_result_string_task_error_t *ptr) {
    if (ptr->is_err) wasmq_task_subtasks_task_error_free(&ptr->val.err);
    else task_string_free(&ptr->val.ok);
}

void wasmq_task_subtasks_list_result_string_task_error_free(
    wasmq_task_subtasks_list_result_string_task_error_t *ptr) {
    if (!ptr->len) return;
    for (size_t i = 0; i < ptr->len; i++) wasmq_task_subtasks_result_string_task_error_free(&ptr->ptr[i]);
    free(ptr->ptr);
}

void wasmq_task_subtasks_result_list_result_string_task_error_task_error_free(
    wasmq_task_subtasks_result_list_result_string_task_error_task_error_t *ptr) {
    if (ptr->is_err) wasmq_task_subtasks_task_error_free(&ptr->val.err);
    else wasmq_task_subtasks_list_result_string_task_error_free(&ptr->val.ok);
}

void task_result_string_task_error_free(task_result_string_task_error_t *ptr) {
    if (ptr->is_err) task_task_error_free(&ptr->val.err);
    else task_string_free(&ptr->val.ok);
}
