//! `{"url": …}` → `{"url", "status", "bytes", "redirects"}`: one HTTP GET
//! through `wasi:http`, following redirects itself (each one a new request,
//! checked by the host like the first). With `"bearer_secret": "NAME"` it
//! sends the granted secret NAME as `Authorization: Bearer …`; with
//! `"url_config": "KEY"` instead of `url` it GETs the URL the operator set
//! as config value KEY (`wasmq module config fetch KEY=URL`). With
//! `"json": true` it parses the final response's body as JSON and returns it
//! as `json` (a JSON API call: the body is kept up to 1 MiB).

use serde::{Deserialize, Serialize};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
struct Input {
    /// The URL to GET, or (`url_config`) the config key that holds it.
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_config: Option<String>,
    #[serde(default = "default_redirects")]
    max_redirects: u32,
    /// A secret the operator granted this module, sent as a bearer token.
    #[serde(default)]
    bearer_secret: Option<String>,
    /// Misbehave on purpose: also log the token and put it in the output
    /// (the host's redaction is tested with it).
    #[serde(default)]
    leak_token: bool,
    /// Parse the final body as JSON and return it.
    #[serde(default)]
    json: bool,
}

/// The most body a `json` call keeps.
const MAX_JSON_BODY: usize = 1024 * 1024;

fn default_redirects() -> u32 {
    5
}

#[derive(Serialize)]
struct Output {
    url: String,
    status: u16,
    bytes: u64,
    redirects: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<serde_json::Value>,
}

struct Url {
    https: bool,
    authority: String,
    path: String,
}

fn parse(url: &str) -> Result<Url, TaskError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(TaskError::invalid_input(format!(
            "{url}: only http:// and https:// URLs"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(TaskError::invalid_input(format!("{url}: no host")));
    }
    Ok(Url {
        https,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// A redirect's `Location`, absolute or relative to `base`.
fn resolve(base: &Url, location: &str) -> String {
    let scheme = if base.https { "https" } else { "http" };
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{}{location}", base.authority)
    } else {
        let dir = &base.path[..base.path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{}{dir}{location}", base.authority)
    }
}

/// What one GET brought back.
struct Response {
    status: u16,
    location: Option<String>,
    /// The body's length.
    bytes: u64,
    /// The body, when asked to keep it.
    body: Option<Vec<u8>>,
}

/// One GET; with `keep`, the body is kept (at most [`MAX_JSON_BODY`]).
fn get(url: &Url, token: Option<&str>, keep: bool) -> Result<Response, String> {
    let headers = Fields::new();
    if let Some(token) = token {
        headers
            .append("authorization", format!("Bearer {token}").as_bytes())
            .map_err(|e| format!("authorization header: {e:?}"))?;
    }
    let request = OutgoingRequest::new(headers);
    request.set_method(&Method::Get).map_err(|()| "method")?;
    let scheme = if url.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
    request
        .set_authority(Some(&url.authority))
        .map_err(|()| "invalid host")?;
    request
        .set_path_with_query(Some(&url.path))
        .map_err(|()| "invalid path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .into_iter()
        .next()
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let body = response.consume().map_err(|()| "body taken twice")?;
    let stream = body.stream().map_err(|()| "body stream taken twice")?;
    let mut bytes = 0u64;
    let mut body = keep.then(Vec::new);
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                if let Some(body) = &mut body {
                    if body.len() + chunk.len() > MAX_JSON_BODY {
                        return Err(format!("the body is over {MAX_JSON_BODY} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the body: {}", e.to_debug_string()));
            }
        }
    }
    Ok(Response {
        status,
        location,
        bytes,
        body,
    })
}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let token = match &input.bearer_secret {
        Some(name) => Some(ctx.config(name).ok_or_else(|| {
            TaskError::permanent(format!(
                "secret {name} is not granted to this module (wasmq module grant --secret)"
            ))
        })?),
        None => None,
    };
    let leaked = token.clone().filter(|_| input.leak_token);
    if let Some(t) = &leaked {
        ctx.log_info(format!("using token {t}"));
    }
    let first = match (input.url, &input.url_config) {
        (Some(url), None) => url,
        (None, Some(key)) => ctx.config(key).ok_or_else(|| {
            TaskError::permanent(format!(
                "config key {key} is not set for this module (wasmq module config)"
            ))
        })?,
        _ => {
            return Err(TaskError::invalid_input(
                "give exactly one of `url` and `url_config`",
            ));
        }
    };
    // The token goes to the first URL's host only, not where it redirects.
    let origin = parse(&first)?.authority;
    let mut current = first;
    let mut redirects = 0;
    loop {
        let url = parse(&current)?;
        let token = token.as_deref().filter(|_| url.authority == origin);
        let Response {
            status,
            location,
            bytes,
            body,
        } = get(&url, token, input.json)
            .map_err(|e| TaskError::permanent(format!("GET {current}: {e}")))?;
        match location {
            Some(location) if (300..400).contains(&status) => {
                if redirects == input.max_redirects {
                    return Err(TaskError::permanent(format!(
                        "GET {current}: more than {} redirects",
                        input.max_redirects
                    )));
                }
                redirects += 1;
                let next = resolve(&url, &location);
                ctx.log_info(format!("{status} from {current}: following to {next}"));
                current = next;
            }
            _ => {
                let json = match body {
                    // A server error or a rate limit may pass; a client error will not.
                    Some(_) if status >= 500 || status == 429 => {
                        return Err(TaskError::retryable(format!(
                            "GET {current}: status {status}"
                        )));
                    }
                    Some(_) if !(200..300).contains(&status) => {
                        return Err(TaskError::permanent(format!(
                            "GET {current}: status {status}"
                        )));
                    }
                    Some(body) => Some(serde_json::from_slice(&body).map_err(|e| {
                        TaskError::permanent(format!("GET {current}: the body is not JSON: {e}"))
                    })?),
                    None => None,
                };
                return Ok(Output {
                    url: current,
                    status,
                    bytes,
                    redirects,
                    leaked,
                    json,
                });
            }
        }
    }
}

wasmq_guest::export_task!(run);
