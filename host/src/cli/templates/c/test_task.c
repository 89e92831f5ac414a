/* Unit tests of the {{name}} task, compiled natively with the test context
 * of wasmq_testing.h (no host, no WebAssembly): make test */
#include "wasmq_testing.h"

static void greets_and_logs(void) {
    wasmq_test_context ctx = wasmq_test_context_new();
    ctx.attempt = 2;
    wasmq_test_run run = wasmq_test_run_task(&ctx, "{\"name\": \"Ada\"}");
    WASMQ_CHECK(run.ok);
    WASMQ_CHECK_STR(run.output, "{\"greeting\":\"Hello, Ada!\"}");
    WASMQ_CHECK(run.log_count == 1);
    WASMQ_CHECK_STR(wasmq_test_log_message(&run, 0), "greeting Ada (attempt 2)");
    WASMQ_CHECK(run.progress_count == 0 && run.cancel_checks == 0);
    wasmq_test_run_free(&run);
}

static void a_missing_name_is_invalid_input(void) {
    wasmq_test_run run = wasmq_test_run_task(NULL, "{}");
    WASMQ_CHECK(!run.ok);
    WASMQ_CHECK_STR(wasmq_test_error_kind_name(run.error_kind), "invalid-input");
    WASMQ_CHECK_STR(run.error_message, "`name` must be a non-empty string");
    WASMQ_CHECK(run.log_count == 0);
    wasmq_test_run_free(&run);
}

int main(void) {
    greets_and_logs();
    a_missing_name_is_invalid_input();
    return wasmq_test_summary("test_task");
}
