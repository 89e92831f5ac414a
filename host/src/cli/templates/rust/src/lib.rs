//! The `{{name}}` task: `{"name": "Ada"}` → `{"greeting": "Hello, Ada!"}`.

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.name.is_empty() {
        return Err(TaskError::invalid_input("`name` must not be empty"));
    }
    // Stored with the attempt: `wasmq task show ID` and the dashboard show it.
    ctx.log_info(format!("greeting {} (attempt {})", input.name, ctx.attempt()));
    Ok(Output {
        greeting: format!("Hello, {}!", input.name),
    })
}

wasmq_guest::export_task!(run);

/// Native unit tests (`cargo test`): no host, no WebAssembly.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_guest::ErrorKind;
    use wasmq_guest::testing::TestContext;

    #[test]
    fn greets_and_logs() {
        let report = TestContext::new().run_json(run, r#"{"name": "Ada"}"#);
        assert_eq!(report.output(), r#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(report.logs[0].message, "greeting Ada (attempt 1)");
    }

    #[test]
    fn refuses_bad_input() {
        let empty = TestContext::new().run_json(run, r#"{"name": ""}"#);
        assert_eq!(empty.error().kind(), ErrorKind::InvalidInput);
        let missing = TestContext::new().run_json(run, "{}");
        assert_eq!(missing.error().kind(), ErrorKind::InvalidInput);
    }
}
