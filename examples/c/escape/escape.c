/* Tries to reach outside the sandbox and reports what it saw, like the Rust
 * `escape` example: one {"ok": bool, "detail": string} per probe, where
 * `ok: true` means that escape worked. The task itself succeeds.
 *
 * Input (all optional): {"write_path": "/tmp/wasmq-escape", "tcp_addr": "..."}.
 * With {"raise": "PATH"} it opens PATH and, when that fails as it must in the
 * sandbox, fails the task with the C library's own message, `PATH: strerror`.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmq.h"

extern char **environ;

static void probe(wasmq_buf *out, const char *name, bool ok, const char *detail) {
    if (out->len > 1) wasmq_buf_append(out, ",");
    wasmq_buf_append_json_string(out, name);
    wasmq_buf_append(out, ok ? ":{\"ok\":true,\"detail\":" : ":{\"ok\":false,\"detail\":");
    wasmq_buf_append_json_string(out, detail);
    wasmq_buf_append(out, "}");
}

static void read_passwd(wasmq_buf *out) {
    FILE *f = fopen("/etc/passwd", "r");
    if (!f) return probe(out, "read_passwd", false, strerror(errno));
    fclose(f);
    probe(out, "read_passwd", true, "opened /etc/passwd");
}

static void list_root(wasmq_buf *out) {
    DIR *d = opendir("/");
    if (!d) return probe(out, "list_root", false, strerror(errno));
    closedir(d);
    probe(out, "list_root", true, "opened /");
}

static void env(wasmq_buf *out) {
    int n = 0;
    for (char **e = environ; e && *e; e++) n++;
    char detail[128];
    snprintf(detail, sizeof detail, "%d variables visible; HOME %s, PATH %s", n,
             getenv("HOME") ? "set" : "unset", getenv("PATH") ? "set" : "unset");
    probe(out, "env", n > 0 || getenv("HOME") || getenv("PATH"), detail);
}

static void tcp_connect(wasmq_buf *out) {
    /* WASI preview 1, which wasi-libc targets here, has no way to open a
     * socket: there is no socket() or connect() to call, and the component
     * imports no wasi:sockets interface at all. */
    probe(out, "tcp_connect", false, "no socket API: WASI preview 1 cannot open a connection");
}

static void write_file(wasmq_buf *out, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return probe(out, "write_file", false, strerror(errno));
    fputs("wasmq sandbox escape\n", f);
    fclose(f);
    probe(out, "write_file", true, path);
}

bool exports_task_run(task_string_t *input, task_string_t *ret, task_task_error_t *err) {
    char *raise = NULL, *path = NULL;
    int has_raise = wasmq_json_get_string(input, "raise", &raise);
    int has_path = wasmq_json_get_string(input, "write_path", &path);
    task_string_free(input);
    if (has_raise == 1) {
        FILE *f = fopen(raise, "r");
        bool failed = wasmq_fail(err, WASMQ_PERMANENT, "%s: %s", raise, f ? "opened" : strerror(errno));
        if (f) fclose(f);
        free(raise);
        free(path);
        return failed;
    }

    wasmq_buf out = {0};
    wasmq_buf_append(&out, "{");
    read_passwd(&out);
    list_root(&out);
    env(&out);
    tcp_connect(&out);
    write_file(&out, has_path == 1 ? path : "/tmp/wasmq-escape");
    wasmq_buf_append(&out, "}");
    free(path);
    if (strstr(out.data, "\"ok\":true")) wasmq_log(WASMQ_WARN, "at least one escape probe got through the sandbox");
    return wasmq_ok(ret, wasmq_buf_take(&out));
}
