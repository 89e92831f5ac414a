/*
 * Unit tests of a C task without a host: the task's sources, wasmq.c and
 * wasmq_testing.c compiled natively (gcc or clang for the machine you are
 * on, not WebAssembly) into a test program that calls the task's `run`
 * export with an input and an attempt of your choosing, and looks at what it
 * returned, logged and reported:
 *
 *     #include "wasmq_testing.h"
 *
 *     static void second_attempt(void) {
 *         wasmq_test_context ctx = wasmq_test_context_new();
 *         ctx.attempt = 2;
 *         wasmq_test_run run = wasmq_test_run_task(&ctx, "{\"n\": 21}");
 *         WASMQ_CHECK(run.ok);
 *         WASMQ_CHECK_STR(run.output, "42");
 *         WASMQ_CHECK_STR(wasmq_test_log_message(&run, 0), "doubling 21");
 *         WASMQ_CHECK(run.progress_count == 1 && run.progress[0].percent == 50);
 *         wasmq_test_run_free(&run);
 *     }
 *
 *     int main(void) {
 *         second_attempt();
 *         return wasmq_test_summary("test_task");
 *     }
 *
 * It stands in for the host below the bindings: wasmq_testing.c defines the
 * functions that wit-bindgen's C bindings declare in task.h for the host's
 * imports (wasmq_task_host_log, ..._progress, ..._context,
 * ..._is_cancelled, the subtasks calls) and the bindings' helpers
 * (task_string_free, ..._free, task_string_dup, ...), so the test program
 * includes the generated task.h but not the generated task.c, which only
 * compiles for WebAssembly. The task calls those functions as it does in a
 * component, through wasmq.h's helpers or directly. Subtasks need the host:
 * under a test context spawn, spawn-many and map fail with a `permanent`
 * task error, and wait returns each child as a `permanent` error.
 */
#ifndef WASMQ_TESTING_H
#define WASMQ_TESTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wasmq.h"

/* The attempt a test runs a task as; start from wasmq_test_context_new(). */
typedef struct {
    const char *task_id;   /* "test" */
    uint32_t attempt;      /* 1 */
    uint32_t max_attempts; /* 3 */
    const char *queue;     /* "default" */
    /* A deadline this many milliseconds after the start of the run; < 0
     * (the default): none. */
    int64_t timeout_ms;
    /* Cancellation is requested once the task has asked
     * wasmq_is_cancelled() this many times (0: from the start); < 0 (the
     * default): never. */
    int cancelled_after;
} wasmq_test_context;

/* Task id `test`, attempt 1 of 3, queue `default`, no deadline, never
 * cancelled. */
wasmq_test_context wasmq_test_context_new(void);

/* One log line the task sent. */
typedef struct {
    wasmq_log_level level;
    char *message;
} wasmq_test_log_line;

/* One progress report, percent clamped to 0..100 as the host clamps it. */
typedef struct {
    int percent;
    char *message;
} wasmq_test_progress;

/* What one run of the task did; free it with wasmq_test_run_free. */
typedef struct {
    /* What `run` returned: true with `output`, or false with the error. */
    bool ok;
    char *output; /* the output JSON text, when ok */
    wasmq_error_kind error_kind;
    char *error_message; /* when !ok */
    char *error_details; /* when !ok and the task gave details; else NULL */
    wasmq_test_log_line *logs;
    size_t log_count;
    wasmq_test_progress *progress;
    size_t progress_count;
    /* How many times it asked wasmq_is_cancelled(). */
    unsigned cancel_checks;
} wasmq_test_run;

/* The `run` export's signature, as task.h declares exports_task_run. */
typedef bool (*wasmq_task_fn)(task_string_t *input, task_string_t *ret, task_task_error_t *err);

/* Runs the task's `run` export (exports_task_run) on the JSON text `input`,
 * as the attempt `ctx` (NULL: wasmq_test_context_new()), the way the
 * component's bindings call it: `input` is handed over as a malloc'd
 * string the task owns, and `ret` or `err` are read and freed afterwards. */
wasmq_test_run wasmq_test_run_task(const wasmq_test_context *ctx, const char *input);
/* The same for another function with the export's signature. */
wasmq_test_run wasmq_test_run_fn(const wasmq_test_context *ctx, wasmq_task_fn fn, const char *input);
void wasmq_test_run_free(wasmq_test_run *run);

/* The message of log line `i`, or NULL when there are fewer lines. */
const char *wasmq_test_log_message(const wasmq_test_run *run, size_t i);
/* "permanent", "retryable" or "invalid-input", as the WIT names them. */
const char *wasmq_test_error_kind_name(wasmq_error_kind kind);

/* Checks: a failed one prints where and what, and is counted; the test
 * program goes on. Each returns whether it held. */
#define WASMQ_CHECK(cond) wasmq_test_check((cond), #cond, __FILE__, __LINE__)
/* Equal NUL-terminated strings; NULL equals nothing (not even NULL). */
#define WASMQ_CHECK_STR(actual, expected) \
    wasmq_test_check_str((actual), (expected), #actual, __FILE__, __LINE__)
bool wasmq_test_check(bool ok, const char *what, const char *file, int line);
bool wasmq_test_check_str(const char *actual, const char *expected, const char *what, const char *file,
                          int line);

/* Prints `NAME: R runs, C checks, all passed` (or how many failed) and
 * returns main's exit status: 0 only when every check held and at least one
 * run and one check were made. */
int wasmq_test_summary(const char *name);

#endif
