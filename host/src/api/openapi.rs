//! `/api/v1/openapi.json`: built from the same [`Endpoint`] table as the
//! router, so every route is documented by construction.

use super::routes::{Endpoint, In, endpoints};
use axum::Json;
use serde_json::{Map, Value, json};

pub(super) async fn document() -> Json<Value> {
    Json(build(&endpoints()))
}

pub(super) fn build(endpoints: &[Endpoint]) -> Value {
    let mut paths = Map::new();
    for e in endpoints {
        let item = paths
            .entry(e.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[e.method] = operation(e);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "wasmq API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Push task modules, enqueue and steer tasks, inspect queues and workers. \
                Every request needs `Authorization: Bearer TOKEN` when the server has a token, \
                a `Host` the server is known by (its listen address, `localhost` on loopback, \
                or an `--allowed-host` name), and a body of the type the operation declares. \
                A request that changes something from a page of another origin (`Origin`, \
                `Sec-Fetch-Site`) is refused. Errors are `{\"error\": {\"kind\", \"message\"}}`; \
                an internal error (500) also has the `id` its details are logged under.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
        "security": [ { "bearer": [] } ],
    })
}

fn operation(e: &Endpoint) -> Value {
    let params: Vec<Value> = e
        .params
        .iter()
        .map(|&(name, loc, ty, required, description)| {
            json!({
                "name": name,
                "in": if loc == In::Path { "path" } else { "query" },
                "required": required,
                "description": description,
                "schema": { "type": ty },
            })
        })
        .collect();
    let mut responses = Map::new();
    for &(status, description, schema) in e.responses {
        let mut r = json!({ "description": description });
        if !schema.is_empty() {
            r["content"] = json!({ "application/json": { "schema": reference(schema) } });
        }
        responses.insert(status.to_string(), r);
    }
    let error = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": reference("Error") } } });
    if e.method != "get" {
        responses.insert(
            "403".into(),
            error("Wrong bearer token, or a request from another origin (`cross-origin`)"),
        );
    }
    responses.insert(
        "415".into(),
        error(if e.body.is_empty() {
            "A body that is not application/json"
        } else {
            "A body of a type this operation does not take"
        }),
    );
    responses.entry("400").or_insert_with(|| {
        error("Bad input, or a Host this server does not answer to (`host-not-allowed`)")
    });
    responses.insert(
        "500".into(),
        error("Internal error: the message names the id of its details in the server log"),
    );
    if e.path.starts_with("/api/") {
        responses.insert(
            "401".into(),
            json!({ "description": "No bearer token", "content": { "application/json": { "schema": reference("Error") } } }),
        );
        responses
            .entry("403")
            .or_insert_with(|| error("Wrong bearer token"));
    }
    let mut op = json!({
        "tags": [e.tag],
        "summary": e.summary,
        "operationId": format!("{}{}", e.method, e.path.replace(['/', '{', '}', '.'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if !e.body.is_empty() {
        let mut content = Map::new();
        for &(media, schema) in e.body {
            content.insert(media.into(), json!({ "schema": reference(schema) }));
        }
        op["requestBody"] = json!({ "required": true, "content": content });
    }
    op
}

fn reference(schema: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{schema}") })
}

fn schemas() -> Value {
    let state = json!({ "type": "string", "enum": ["queued", "leased", "running", "waiting", "succeeded", "failed", "cancelled"] });
    let time = json!({ "type": "string", "format": "date-time" });
    let opt_time = json!({ "type": ["string", "null"], "format": "date-time" });
    let opt_str = json!({ "type": ["string", "null"] });
    let opt_int = json!({ "type": ["integer", "null"] });
    let fuel = json!({
        "description": "Fuel units, or \"unlimited\"; absent or null = the worker's default",
        "oneOf": [
            { "type": "integer", "minimum": 1 },
            { "type": "string", "enum": [crate::fuel::UNLIMITED] },
            { "type": "null" }
        ]
    });
    let mut all = json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["kind", "message"],
                "properties": {
                    "kind": { "type": "string", "description": "bad-request, invalid-input, invalid-argument, invalid-module, bad-reference, host-not-allowed, unauthorized, forbidden, cross-origin, not-found, no-route, illegal-transition, module-in-use, conflict, too-large, unsupported-media-type, unavailable, internal" },
                    "message": { "type": "string" },
                    "id": { "type": "string", "description": "Of an internal error only: the id its details are logged under" }
                }
            } }
        },
        "Binary": { "type": "string", "format": "binary" },
        "ModuleUpload": {
            "type": "object",
            "required": ["file", "name"],
            "properties": {
                "file": { "type": "string", "format": "binary" },
                "name": { "type": "string" },
                "version": { "type": "string" }
            }
        },
        "Module": {
            "type": "object",
            "properties": {
                "name": { "type": "string" }, "version": { "type": "string" },
                "sha256": { "type": "string" }, "size": { "type": "integer" },
                "created_at": time, "created": { "type": "boolean" }
            }
        },
        "ModuleList": { "type": "object", "properties": { "modules": { "type": "array", "items": reference("Module") } } },
        "Deleted": { "type": "object", "properties": { "deleted": { "type": "integer" } } },
        "EnqueueRequest": {
            "type": "object",
            "required": ["module"],
            "additionalProperties": false,
            "properties": {
                "module": { "type": "string", "description": "NAME or NAME@VERSION" },
                "input": { "description": "Any JSON value (default {})" },
                "queue": { "type": "string", "default": "default" },
                "priority": { "type": "integer", "minimum": -100, "maximum": 100, "default": 0 },
                "run_after": time,
                "delay_ms": { "type": "integer", "minimum": 0 },
                "max_attempts": { "type": "integer", "minimum": 1, "default": 3 },
                "unique_key": { "type": "string" },
                "fuel": fuel,
                "memory_bytes": { "type": "integer", "minimum": 0 },
                "timeout_ms": { "type": "integer", "minimum": 0 }
            }
        },
        "Enqueued": {
            "type": "object",
            "properties": { "id": { "type": "string", "format": "uuid" }, "deduplicated": { "type": "boolean" } }
        },
        "Task": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "format": "uuid" }, "seq": { "type": "integer" },
                "module_name": { "type": "string" }, "module_version": { "type": "string" },
                "module_sha256": { "type": "string" }, "queue": { "type": "string" },
                "priority": { "type": "integer" }, "input": {}, "state": state,
                "run_after": time, "attempt": { "type": "integer" }, "max_attempts": { "type": "integer" },
                "limits": { "type": "object", "properties": { "fuel": fuel, "memory_bytes": opt_int, "timeout_ms": opt_int } },
                "unique_key": opt_str, "lease_owner": opt_str, "lease_expires_at": opt_time,
                "cancel_requested": { "type": "boolean" }, "result": {},
                "error_kind": opt_str, "error_message": opt_str, "error_logs": opt_str,
                "progress_percent": opt_int, "progress_message": opt_str,
                "enqueued_at": time, "started_at": opt_time, "finished_at": opt_time,
                "parent_id": opt_str, "ray_submission_id": opt_str, "updated_at": time
            }
        },
        "TaskPage": {
            "type": "object",
            "properties": {
                "tasks": { "type": "array", "items": reference("TaskSummary") },
                "next_before": { "type": ["integer", "null"], "description": "Pass as `before` for the next page; null on the last page" }
            }
        },
        "CancelResult": {
            "type": "object",
            "properties": { "id": { "type": "string" }, "outcome": { "type": "string", "enum": ["cancelled", "requested"] }, "state": state }
        },
        "Attempt": {
            "type": "object",
            "properties": {
                "attempt": { "type": "integer" }, "worker_id": { "type": "string" },
                "started_at": time, "finished_at": opt_time, "outcome": opt_str,
                "error_message": opt_str, "logs": opt_str, "fuel_used": opt_int,
                "peak_memory": opt_int, "duration_ms": opt_int, "ray_submission_id": opt_str,
                "ray_node_id": opt_str
            }
        },
        "ChildList": { "type": "object", "properties": {
            "task_id": { "type": "string" },
            "children_total": { "type": "integer" },
            "waiting_on": { "type": ["integer", "null"] },
            "descendants": { "type": "object", "properties": {
                "descendants": { "type": "integer" }, "fuel_used": { "type": "integer" },
                "duration_ms": { "type": "integer" } } },
            "children": { "type": "array", "items": reference("TaskSummary") },
            "next_from": { "type": ["integer", "null"] } } },
        "AttemptList": { "type": "object", "properties": { "task_id": { "type": "string" }, "attempts": { "type": "array", "items": reference("Attempt") } } },
        "TaskLogs": {
            "type": "object",
            "properties": {
                "task_id": { "type": "string" },
                "attempts": { "type": "array", "items": { "type": "object", "properties": {
                    "attempt": { "type": "integer" }, "worker_id": { "type": "string" },
                    "outcome": opt_str, "logs": { "type": "string" } } } }
            }
        },
        "Worker": {
            "type": "object",
            "properties": {
                "id": { "type": "string" }, "hostname": { "type": "string" }, "pid": { "type": "integer" },
                "mode": { "type": "string" }, "queues": { "type": "string" }, "concurrency": { "type": "integer" },
                "started_at": time, "last_heartbeat_at": time, "stopped_at": opt_time,
                "running_tasks": { "type": "integer" }, "heartbeat_age_seconds": { "type": "number" },
                "alive": { "type": "boolean" }
            }
        },
        "WorkerList": { "type": "object", "properties": { "workers": { "type": "array", "items": reference("Worker") } } },
        "QueueList": {
            "type": "object",
            "properties": { "queues": { "type": "array", "items": { "type": "object", "properties": {
                "queue": { "type": "string" },
                "counts": { "type": "object", "additionalProperties": { "type": "integer" } },
                "oldest_queued_at": opt_time,
                "oldest_queued_age_seconds": { "type": ["number", "null"] }
            } } } }
        }
    });
    // A second literal: one would exceed `json!`'s recursion limit.
    let more = json!({
        "EnqueueBatch": {
            "type": "object",
            "required": ["tasks"],
            "additionalProperties": false,
            "properties": {
                "tasks": { "type": "array", "minItems": 1, "maxItems": 1000, "items": reference("EnqueueRequest") }
            }
        },
        "EnqueuedList": {
            "type": "object",
            "properties": { "tasks": { "type": "array", "items": reference("Enqueued") } }
        },
        "TaskSummary": {
            "type": "object",
            "description": "A task without its input, result or logs",
            "properties": {
                "id": { "type": "string", "format": "uuid" }, "seq": { "type": "integer" },
                "module_name": { "type": "string" }, "module_version": { "type": "string" },
                "queue": { "type": "string" }, "priority": { "type": "integer" }, "state": state,
                "run_after": time, "attempt": { "type": "integer" }, "max_attempts": { "type": "integer" },
                "free_runs": { "type": "integer" }, "lease_owner": opt_str,
                "cancel_requested": { "type": "boolean" }, "error_kind": opt_str,
                "error_preview": { "type": ["string", "null"], "description": "First 120 characters of the error message, `…` when cut" },
                "result_preview": { "type": ["string", "null"], "description": "First 120 characters of the result's JSON text, `…` when cut" },
                "progress_percent": opt_int,
                "enqueued_at": time, "started_at": opt_time, "finished_at": opt_time,
                "parent_id": opt_str, "ray_submission_id": opt_str
            }
        }
    });
    if let (Value::Object(all), Value::Object(more)) = (&mut all, more) {
        all.extend(more);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the router is in the document, with its method, and
    /// every schema it refers to exists.
    #[test]
    fn document_covers_every_route() {
        let eps = endpoints();
        let doc = build(&eps);
        for e in &eps {
            let op = &doc["paths"][e.path][e.method];
            assert!(op.is_object(), "{} {} missing", e.method, e.path);
            assert!(
                !e.summary.is_empty(),
                "{} {} has no summary",
                e.method,
                e.path
            );
            assert!(
                !e.responses.is_empty(),
                "{} {} has no responses",
                e.method,
                e.path
            );
            for p in e.path.split('/').filter(|s| s.starts_with('{')) {
                let name = p.trim_matches(['{', '}']);
                assert!(
                    e.params
                        .iter()
                        .any(|(n, l, ..)| *n == name && *l == In::Path),
                    "{} {}: path parameter {name} undocumented",
                    e.method,
                    e.path
                );
            }
        }
        let text = doc.to_string();
        for r in text.split("#/components/schemas/").skip(1) {
            let name: String = r.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(
                doc["components"]["schemas"][&name].is_object(),
                "schema {name} missing"
            );
        }
    }
}
