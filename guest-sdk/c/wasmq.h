/*
 * Helpers for writing wasmq tasks in C.
 *
 * A task implements the `run` export that wit-bindgen's C generator declares
 * in task.h as `exports_task_run` (generated from wit/task.wit by
 * `wit-bindgen c wit --world task`):
 *
 *     bool exports_task_run(task_string_t *input, task_string_t *ret, task_task_error_t *err);
 *
 * `input` is JSON text the task owns (free it with task_string_free); on
 * success the task stores its JSON output in `ret` and returns true, on
 * failure it fills `err` and returns false. The helpers below cover the
 * plumbing: reading a string field of the input object, writing JSON text,
 * building the task error, and the host's log, progress, context and
 * cancellation calls. Everything they return is malloc'd; the generated
 * bindings free `ret` and `err` after the host has read them.
 */
#ifndef WASMQ_H
#define WASMQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "task.h"

/* The error kinds of wit/task.wit; the host's retry policy keys on them. */
typedef enum {
    WASMQ_PERMANENT = WASMQ_TASK_TYPES_ERROR_KIND_PERMANENT,
    WASMQ_RETRYABLE = WASMQ_TASK_TYPES_ERROR_KIND_RETRYABLE,
    WASMQ_INVALID_INPUT = WASMQ_TASK_TYPES_ERROR_KIND_INVALID_INPUT,
} wasmq_error_kind;

typedef enum {
    WASMQ_TRACE = WASMQ_TASK_TYPES_LOG_LEVEL_TRACE,
    WASMQ_DEBUG = WASMQ_TASK_TYPES_LOG_LEVEL_DEBUG,
    WASMQ_INFO = WASMQ_TASK_TYPES_LOG_LEVEL_INFO,
    WASMQ_WARN = WASMQ_TASK_TYPES_LOG_LEVEL_WARN,
    WASMQ_ERROR = WASMQ_TASK_TYPES_LOG_LEVEL_ERROR,
} wasmq_log_level;

/* Fills `err` with a task error whose message is formatted like printf;
 * returns false, so a task can `return wasmq_fail(err, ...)`. */
bool wasmq_fail(task_task_error_t *err, wasmq_error_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stores `json` (NUL-terminated, malloc'd; ownership passes to the
 * bindings) as the task's output; returns true. */
bool wasmq_ok(task_string_t *ret, char *json);

/* Looks up `key` in the JSON object `input`.
 * Returns 1 and sets *value (malloc'd, NUL-terminated, UTF-8) when it is a
 * string; 0 when the key is absent; -1 when the input is not a JSON object
 * or the value is not a string. */
int wasmq_json_get_string(const task_string_t *input, const char *key, char **value);

/* A growable, NUL-terminated byte buffer for building JSON output. */
typedef struct {
    char *data;
    size_t len, cap;
} wasmq_buf;

void wasmq_buf_append(wasmq_buf *buf, const char *s);
/* Appends `s` as a JSON string literal, escaped as serde_json, Python's
 * json.dumps(ensure_ascii=False) and JSON.stringify all escape it. */
void wasmq_buf_append_json_string(wasmq_buf *buf, const char *s);
/* Hands the buffer's bytes over (the buffer is left empty). */
char *wasmq_buf_take(wasmq_buf *buf);

/* The host's services (wit/task.wit, interface `host`). */
void wasmq_log(wasmq_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wasmq_progress(int percent, const char *message);
bool wasmq_is_cancelled(void);
/* The task's id, attempt, queue and deadline; free with
 * wasmq_task_types_task_context_free. */
void wasmq_context(wasmq_task_types_task_context_t *ctx);

#endif
