//! The web dashboard: server-rendered HTML, no JavaScript, no build step.
//!
//! Pages: the queues × states overview (`/`), the task list with filters and
//! paging (`/tasks`), a task's page with its attempts and logs and cancel or
//! retry buttons (`/tasks/{id}`), modules and workers. With an API token the
//! dashboard asks for it once (`/login`) and keeps a signed session cookie
//! that expires (HttpOnly, SameSite=Strict) until `/logout`. Every form that
//! changes something carries the session's CSRF token, and (as for every
//! request that changes something, see [`super::guard`]) a form sent from
//! another origin is refused, so another site cannot press the buttons.

mod html;

use super::AppState;
use super::auth::{SESSION_COOKIE, Session, session_cookie};
use super::errors::ApiError;
use super::routes::system::{age_seconds, queue_rows};
use super::routes::tasks::{ListQuery, next_before};
use crate::store::{CancelOutcome, Store, TaskState, TaskSummary};
use axum::Router;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use html::{age, badge, bare_page, csrf_field, esc, json_block, page, table, time, url};
use serde::Deserialize;
use uuid::Uuid;

/// Tasks per page of the dashboard's list.
const PAGE: u32 = 50;

pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/cancel", post(cancel))
        .route("/tasks/{id}/retry", post(retry))
        .route("/modules", get(modules))
        .route("/workers", get(workers))
        .route("/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(state, require_session))
        .route("/login", get(login_form).post(login))
}

/// Unix seconds now.
fn now() -> i64 {
    Utc::now().timestamp()
}

/// An error as a page (the API's errors are JSON; people get HTML).
struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError(e.into())
    }
}

impl From<crate::client::ClientError> for PageError {
    fn from(e: crate::client::ClientError) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = format!(
            r#"<p class="flash">{}: {}</p>"#,
            esc(self.0.kind),
            esc(&self.0.message)
        );
        (self.0.status, Html(bare_page("Error", &body))).into_response()
    }
}

type PageResult = Result<Html<String>, PageError>;

/// Every page and form needs a session: a valid cookie when the server has
/// a token, the anonymous session otherwise. The session (for its CSRF
/// token) is handed to the handler as an extension.
async fn require_session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let session = if state.token.is_some() {
        session_cookie(req.headers()).and_then(|c| state.sessions.verify(&c, now()))
    } else {
        Some(state.sessions.anonymous())
    };
    if let Some(session) = session {
        req.extensions_mut().insert(session);
        return next.run(req).await;
    }
    if req.method() == Method::GET {
        let next_path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        return Redirect::to(&format!("/login?next={}", url(&next_path))).into_response();
    }
    PageError(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in first",
    ))
    .into_response()
}

/// The field every dashboard form that changes something carries.
#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// A form's CSRF token must be its session's.
fn check_csrf(session: &Session, form: &CsrfForm) -> Result<(), PageError> {
    if session.csrf_matches(form.csrf.as_deref()) {
        return Ok(());
    }
    tracing::warn!("dashboard form refused: missing or wrong CSRF token");
    Err(PageError(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this form has expired or did not come from this dashboard: reload the page and try again",
    )))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Only paths of this site: `next` must not send the browser elsewhere.
/// A path starts with one `/`; `//host` and `/\\host` are other sites to a
/// browser, which also drops tabs and line breaks (`/\t/host`), so only
/// visible ASCII is kept (a URI has nothing else).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn login_form(Query(q): Query<LoginQuery>) -> Html<String> {
    let next = safe_next(q.next.as_deref());
    Html(bare_page(
        "Log in",
        &format!(
            r#"<form method="post" action="/login">
<input type="hidden" name="next" value="{}">
<label>API token <input type="password" name="token" id="token" autofocus></label>
<button type="submit" id="login">Log in</button></form>"#,
            esc(&next)
        ),
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Logging in needs no CSRF token: the form's secret is the API token
/// itself, and a form from another origin is refused before it gets here.
async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = &state.token else {
        return Redirect::to("/").into_response();
    };
    if !token.matches(&f.token) {
        tracing::warn!("dashboard login with a wrong token");
        return PageError(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "wrong token",
        ))
        .into_response();
    }
    let (value, _) = state.sessions.issue(now());
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        state.sessions.ttl().as_secs()
    );
    tracing::info!("dashboard login");
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&safe_next(f.next.as_deref())),
    )
        .into_response()
}

/// Ends the session: its cookie is cleared here and refused from now on.
async fn logout(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&session, &f)?;
    state.sessions.revoke(&session, now());
    tracing::info!("dashboard logout");
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

// ---- pages -------------------------------------------------------------------

async fn overview(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let store = state.client.store();
    let now = Utc::now();
    let stats = store.queue_stats().await?;
    let mut header = vec!["queue"];
    header.extend(TaskState::ALL.iter().map(|s| s.as_str()));
    header.push("oldest queued");
    let rows: Vec<Vec<String>> = queue_rows(&stats)
        .iter()
        .map(|r| {
            let mut row = vec![format!(
                r#"<a href="/tasks?queue={}">{}</a>"#,
                esc(&url(&r.queue)),
                esc(&r.queue)
            )];
            for (s, n) in &r.counts {
                row.push(format!(
                    r#"<a href="/tasks?queue={}&amp;state={}" data-queue="{}" data-state="{}">{n}</a>"#,
                    esc(&url(&r.queue)),
                    s.as_str(),
                    esc(&r.queue),
                    s.as_str()
                ));
            }
            row.push(r.oldest_queued_at.map_or("–".into(), |t| age(age_seconds(now, t))));
            row
        })
        .collect();
    let workers = store.list_workers().await?;
    let alive = workers.iter().filter(|w| w.stopped_at.is_none()).count();
    let recent = store
        .list_tasks(&crate::store::TaskFilter {
            limit: 20,
            ..Default::default()
        })
        .await?;
    let body = format!(
        r#"<h2>Queues</h2>{}
<p><a href="/workers">{alive} worker(s) alive</a> · <a href="/modules">modules</a></p>
<h2>Recent tasks</h2>{}<p><a href="/tasks">All tasks →</a></p>"#,
        if rows.is_empty() {
            "<p class=\"muted\">No tasks yet.</p>".to_string()
        } else {
            table(&header, &rows)
        },
        task_table(&recent)
    );
    Ok(Html(page(&session, "Overview", &body)))
}

fn task_table(tasks: &[TaskSummary]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                format!(
                    r#"<a href="/tasks/{id}" class="task-link" data-task="{id}">{id}</a>"#,
                    id = t.id
                ),
                esc(&format!("{}@{}", t.module_name, t.module_version)),
                esc(&t.queue),
                badge(t.state.as_str()),
                format!("{}/{}", t.attempt, t.max_attempts),
                time(Some(t.enqueued_at)),
                esc(&html_clip(
                    t.error_preview
                        .as_deref()
                        .or(t.result_preview.as_deref())
                        .unwrap_or(""),
                    80,
                )),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "module",
            "queue",
            "state",
            "attempt",
            "enqueued",
            "result / error",
        ],
        &rows,
    )
}

fn html_clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

async fn tasks(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let filter = q.filter(PAGE)?;
    let list = state.client.store().list_tasks(&filter).await?;
    let mut options = String::from(r#"<option value="">any state</option>"#);
    for s in TaskState::ALL {
        let selected = if filter.state == Some(s) {
            " selected"
        } else {
            ""
        };
        options.push_str(&format!(r#"<option value="{s}"{selected}>{s}</option>"#));
    }
    let field = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let form = format!(
        r#"<form method="get" action="/tasks">
<select name="state" id="f-state">{options}</select>
<input name="queue" placeholder="queue" value="{}">
<input name="module" placeholder="module" value="{}">
<button type="submit">Filter</button> <a href="/tasks">clear</a></form>"#,
        field(&filter.queue),
        field(&filter.module)
    );
    let mut more = String::new();
    if let Some(before) = next_before(&list, filter.limit) {
        let mut qs = format!("before={before}");
        if let Some(s) = filter.state {
            qs.push_str(&format!("&state={s}"));
        }
        for (k, v) in [("queue", &filter.queue), ("module", &filter.module)] {
            if let Some(v) = v {
                qs.push_str(&format!("&{k}={}", url(v)));
            }
        }
        more = format!(
            r#"<p><a href="/tasks?{}" id="older">Older →</a></p>"#,
            esc(&qs)
        );
    }
    let body = format!(
        "{form}{}{more}",
        if list.is_empty() {
            "<p class=\"muted\">No task matches.</p>".to_string()
        } else {
            task_table(&list)
        }
    );
    Ok(Html(page(&session, "Tasks", &body)))
}

async fn task(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> PageResult {
    let id = parse_id(&id)?;
    let t = state.client.get(id).await?;
    let attempts = state.client.store().list_attempts(id).await?;
    let ray_link = |submission: &str| match &state.ray_dashboard_url {
        Some(base) => format!(
            r#"<a href="{}/#/jobs/{}" class="ray-link">{}</a>"#,
            esc(base),
            esc(&url(submission)),
            esc(submission)
        ),
        None => esc(submission),
    };
    let mut facts = vec![
        (
            "state",
            format!(
                r#"<span id="task-state">{}</span>"#,
                badge(t.state.as_str())
            ),
        ),
        (
            "module",
            esc(&format!(
                "{}@{} (sha256 {})",
                t.module_name, t.module_version, t.module_sha256
            )),
        ),
        (
            "queue",
            format!("{} (priority {})", esc(&t.queue), t.priority),
        ),
        (
            "attempt",
            if t.free_runs > 0 {
                format!(
                    "{} of {} ({} runs, {} free)",
                    t.counted_attempts(),
                    t.max_attempts,
                    t.attempt,
                    t.free_runs
                )
            } else {
                format!("{} of {}", t.attempt, t.max_attempts)
            },
        ),
        ("enqueued", time(Some(t.enqueued_at))),
        ("run after", time(Some(t.run_after))),
        ("started", time(t.started_at)),
        ("finished", time(t.finished_at)),
    ];
    if let Some(p) = t.progress_percent {
        facts.push((
            "progress",
            format!("{p}% {}", esc(t.progress_message.as_deref().unwrap_or(""))),
        ));
    }
    if let Some(o) = &t.lease_owner {
        facts.push((
            "lease",
            format!("{} until {}", esc(o), time(t.lease_expires_at)),
        ));
    }
    if t.cancel_requested {
        facts.push(("cancel", "requested".into()));
    }
    if let Some(k) = &t.unique_key {
        facts.push(("unique key", esc(k)));
    }
    if let Some(r) = &t.ray_submission_id {
        facts.push(("Ray job", ray_link(r)));
    }
    if let Some(parent) = t.parent_id {
        facts.push((
            "parent",
            format!(
                r#"<a href="/tasks/{parent}" id="parent-link">{parent}</a> (spawn #{}, depth {})"#,
                t.spawn_seq.map_or("-".into(), |s| s.to_string()),
                t.depth
            ),
        ));
    }
    if t.state == TaskState::Waiting {
        facts.push((
            "waiting",
            format!("for {} more of its children", t.waiting_on),
        ));
    }
    let family = if t.children > 0 {
        let store = state.client.store();
        let children = store.list_children(id, 0, CHILDREN_SHOWN).await?;
        let usage = store.family_usage(id).await?;
        facts.push((
            "children",
            format!(
                "{} ({} descendants; their runs used {} fuel in {} ms)",
                t.children, usage.descendants, usage.fuel_used, usage.duration_ms
            ),
        ));
        format!(
            "<h2>Children</h2><p class=\"muted\">The first {} by spawn number \
             (<code>GET /api/v1/tasks/{id}/children</code> pages through all).</p>{}",
            children.len(),
            task_table(&children)
        )
    } else {
        String::new()
    };
    let facts: Vec<Vec<String>> = facts.into_iter().map(|(k, v)| vec![esc(k), v]).collect();

    let mut actions = String::new();
    let csrf = csrf_field(&session);
    if t.state.is_unfinished() && !t.cancel_requested {
        actions.push_str(&format!(
            r#"<form method="post" action="/tasks/{id}/cancel" class="inline">{csrf}<button id="cancel" type="submit">Cancel</button></form> "#
        ));
    }
    if matches!(t.state, TaskState::Failed | TaskState::Cancelled) {
        actions.push_str(&format!(
            r#"<form method="post" action="/tasks/{id}/retry" class="inline">{csrf}<button id="retry" type="submit">Retry</button></form>"#
        ));
    }

    let attempt_rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let num = |v: Option<u64>| v.map_or("–".into(), |v| v.to_string());
            vec![
                a.attempt.to_string(),
                esc(&a.worker_id),
                time(Some(a.started_at)),
                a.outcome_name().map_or("<i>running</i>".to_string(), esc),
                num(a.duration_ms),
                num(a.fuel_used),
                num(a.peak_memory),
                esc(a.error_message.as_deref().unwrap_or("")),
                a.ray_submission_id
                    .as_deref()
                    .map_or(String::new(), ray_link),
                esc(a.ray_node_id.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    let mut logs = String::new();
    for a in &attempts {
        if let Some(l) = a.logs.as_deref().filter(|l| !l.is_empty()) {
            logs.push_str(&format!(
                "<h3>Attempt {} ({})</h3><pre class=\"logs\">{}</pre>",
                a.attempt,
                esc(a.outcome_name().unwrap_or("running")),
                esc(l)
            ));
        }
    }
    if logs.is_empty() {
        logs = "<p class=\"muted\">No log lines captured.</p>".into();
    }
    let mut body = format!(
        "<p>{actions}</p>{}<h2>Input</h2>{}",
        table(&["", ""], &facts),
        json_block(&t.input)
    );
    if let Some(r) = &t.result {
        body.push_str(&format!("<h2>Result</h2>{}", json_block(r)));
    }
    if let Some(e) = &t.error_message {
        body.push_str(&format!(
            "<h2>Error</h2><p><b>{}</b></p><pre id=\"error\">{}</pre>",
            esc(t.error_kind.as_deref().unwrap_or("error")),
            esc(e)
        ));
    }
    body.push_str(&family);
    body.push_str(&format!(
        "<h2>Attempts</h2>{}<h2>Logs</h2>{logs}",
        table(
            &[
                "#",
                "worker",
                "started",
                "outcome",
                "ms",
                "fuel",
                "peak memory",
                "error",
                "Ray job",
                "Ray node"
            ],
            &attempt_rows
        )
    ));
    Ok(Html(page(&session, &format!("Task {id}"), &body)))
}

/// Children listed on a task's page.
const CHILDREN_SHOWN: u32 = 50;

fn parse_id(id: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(id).map_err(|_| PageError(ApiError::not_found(format!("task {id} not found"))))
}

async fn cancel(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Redirect, PageError> {
    check_csrf(&session, &f)?;
    let id = parse_id(&id)?;
    match state.client.cancel(id).await? {
        CancelOutcome::Cancelled | CancelOutcome::Requested => {
            tracing::info!(task_id = %id, "cancel pressed on the dashboard")
        }
        CancelOutcome::AlreadyFinished(_) => {}
    }
    Ok(Redirect::to(&format!("/tasks/{id}")))
}

async fn retry(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Redirect, PageError> {
    check_csrf(&session, &f)?;
    let id = parse_id(&id)?;
    state.client.retry(id).await?;
    tracing::info!(task_id = %id, "retry pressed on the dashboard");
    Ok(Redirect::to(&format!("/tasks/{id}")))
}

async fn modules(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let ms = state.client.store().list_modules().await?;
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                format!(
                    r#"<a href="/tasks?module={}">{}</a>"#,
                    esc(&url(&m.name)),
                    esc(&m.reference())
                ),
                m.size.to_string(),
                esc(&m.sha256),
                time(Some(m.created_at)),
            ]
        })
        .collect();
    Ok(Html(page(
        &session,
        "Modules",
        &table(&["module", "bytes", "sha256", "pushed"], &rows),
    )))
}

async fn workers(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let now = Utc::now();
    let ws = state.client.store().list_workers().await?;
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            vec![
                esc(&w.id),
                esc(&w.mode),
                esc(&w.queues.to_string()),
                w.concurrency.to_string(),
                w.running_tasks.to_string(),
                age(age_seconds(now, w.last_heartbeat_at)),
                if w.stopped_at.is_some() {
                    "stopped".into()
                } else {
                    "alive".into()
                },
            ]
        })
        .collect();
    Ok(Html(page(
        &session,
        "Workers",
        &table(
            &[
                "worker",
                "mode",
                "queues",
                "concurrency",
                "leased",
                "heartbeat age",
                "status",
            ],
            &rows,
        ),
    )))
}
