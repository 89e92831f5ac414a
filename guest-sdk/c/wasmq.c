/* Helpers for writing wasmq tasks in C; see wasmq.h. */
#include "wasmq.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *vformat(const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0) n = 0;
    char *s = malloc((size_t)n + 1);
    if (!s) abort();
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

static task_string_t owned_string(char *s) {
    task_string_t out = {(uint8_t *)s, strlen(s)};
    return out;
}

bool wasmq_fail(task_task_error_t *err, wasmq_error_kind kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err->kind = (wasmq_task_types_error_kind_t)kind;
    err->message = owned_string(vformat(fmt, ap));
    err->details.is_some = false;
    va_end(ap);
    return false;
}

bool wasmq_ok(task_string_t *ret, char *json) {
    *ret = owned_string(json);
    return true;
}

/* ---- JSON input: just enough to read string fields of an object ---- */

typedef struct {
    const uint8_t *p, *end;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int hex4(cursor *c, unsigned *out) {
    if (c->end - c->p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t h = *c->p++;
        v <<= 4;
        if (h >= '0' && h <= '9') v |= h - '0';
        else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
        else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
        else return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(wasmq_buf *b, unsigned cp) {
    char s[5] = {0};
    if (cp < 0x80) {
        s[0] = (char)cp;
    } else if (cp < 0x800) {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s[0] = (char)(0xE0 | (cp >> 12));
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
    } else {
        s[0] = (char)(0xF0 | (cp >> 18));
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[3] = (char)(0x80 | (cp & 0x3F));
    }
    wasmq_buf_append(b, s);
}

/* Parses a string literal at the cursor; decodes it into `out` if not NULL. */
static int parse_string(cursor *c, wasmq_buf *out) {
    if (c->p >= c->end || *c->p != '"') return -1;
    c->p++;
    while (c->p < c->end) {
        uint8_t ch = *c->p++;
        if (ch == '"') return 0;
        if (ch < 0x20) return -1;
        if (ch != '\\') {
            if (out) {
                char s[2] = {(char)ch, 0};
                wasmq_buf_append(out, s);
            }
            continue;
        }
        if (c->p >= c->end) return -1;
        uint8_t e = *c->p++;
        unsigned cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (hex4(c, &cp)) return -1;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u') return -1;
                c->p += 2;
                if (hex4(c, &lo) || lo < 0xDC00 || lo >= 0xE000) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                return -1;
            }
            break;
        default: return -1;
        }
        if (out) put_utf8(out, cp);
    }
    return -1;
}

static int skip_value(cursor *c, int depth);

static int skip_container(cursor *c, uint8_t close, bool keyed, int depth) {
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return 0;
    }
    for (;;) {
        if (keyed) {
            skip_ws(c);
            if (parse_string(c, NULL)) return -1;
            skip_ws(c);
            if (c->p >= c->end || *c->p++ != ':') return -1;
        }
        if (skip_value(c, depth + 1)) return -1;
        skip_ws(c);
        if (c->p >= c->end) return -1;
        uint8_t ch = *c->p++;
        if (ch == close) return 0;
        if (ch != ',') return -1;
    }
}

static int skip_value(cursor *c, int depth) {
    if (depth > 128) return -1;
    skip_ws(c);
    if (c->p >= c->end) return -1;
    switch (*c->p) {
    case '"': return parse_string(c, NULL);
    case '{': return skip_container(c, '}', true, depth);
    case '[': return skip_container(c, ']', false, depth);
    default:
        /* A number or a literal: the host checked the input is JSON. */
        while (c->p < c->end && !strchr(",}] \t\r\n", *c->p)) c->p++;
        return 0;
    }
}

int wasmq_json_get_string(const task_string_t *input, const char *key, char **value) {
    cursor c = {input->ptr, input->ptr + input->len};
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return -1;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') return 0;
    int found = 0;
    for (;;) {
        wasmq_buf k = {0};
        skip_ws(&c);
        int bad = parse_string(&c, &k);
        bool match = !bad && strcmp(k.data ? k.data : "", key) == 0;
        free(k.data);
        if (bad) return -1;
        skip_ws(&c);
        if (c.p >= c.end || *c.p++ != ':') return -1;
        skip_ws(&c);
        if (match) {
            /* The last occurrence wins, as in serde_json, JSON.parse and json.loads. */
            if (c.p >= c.end || *c.p != '"') return -1;
            wasmq_buf v = {0};
            if (parse_string(&c, &v)) {
                free(v.data);
                return -1;
            }
            if (found) free(*value);
            *value = wasmq_buf_take(&v);
            found = 1;
        } else if (skip_value(&c, 0)) {
            return -1;
        }
        skip_ws(&c);
        if (c.p >= c.end) return -1;
        uint8_t ch = *c.p++;
        if (ch == '}') return found;
        if (ch != ',') return -1;
    }
}

/* ---- JSON output ---- */

static void reserve(wasmq_buf *b, size_t more) {
    if (b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + more + 1) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) abort();
    b->cap = cap;
}

void wasmq_buf_append(wasmq_buf *b, const char *s) {
    size_t n = strlen(s);
    reserve(b, n);
    memcpy(b->data + b->len, s, n + 1);
    b->len += n;
}

void wasmq_buf_append_json_string(wasmq_buf *b, const char *s) {
    wasmq_buf_append(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8] = {0};
        switch (*p) {
        case '"': strcpy(esc, "\\\""); break;
        case '\\': strcpy(esc, "\\\\"); break;
        case '\b': strcpy(esc, "\\b"); break;
        case '\f': strcpy(esc, "\\f"); break;
        case '\n': strcpy(esc, "\\n"); break;
        case '\r': strcpy(esc, "\\r"); break;
        case '\t': strcpy(esc, "\\t"); break;
        default:
            if (*p < 0x20) snprintf(esc, sizeof esc, "\\u%04x", *p);
            else esc[0] = (char)*p;
        }
        wasmq_buf_append(b, esc);
    }
    wasmq_buf_append(b, "\"");
}

char *wasmq_buf_take(wasmq_buf *b) {
    reserve(b, 0);
    b->data[b->len] = '\0'; /* an empty buffer has no terminator yet */
    char *data = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return data;
}

/* ---- host services ---- */

void wasmq_log(wasmq_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    task_string_t s = {(uint8_t *)msg, strlen(msg)};
    wasmq_task_host_log((wasmq_task_host_log_level_t)level, &s);
    free(msg);
}

void wasmq_progress(int percent, const char *message) {
    if (percent < 0) percent = 0;
    if (percent > 100) percent = 100;
    task_string_t s = {(uint8_t *)message, strlen(message)};
    wasmq_task_host_progress((uint8_t)percent, &s);
}

bool wasmq_is_cancelled(void) { return wasmq_task_host_is_cancelled(); }

void wasmq_context(wasmq_task_types_task_context_t *ctx) { wasmq_task_host_context(ctx); }
