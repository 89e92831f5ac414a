//! The admin commands: `migrate`, `module …`, `task …`, `workers`.

use super::exit::{self, Exit};
use super::limits::LimitArgs;
use super::table::{Table, clip};
use super::term;
use crate::client::{Client, ClientError, EnqueueRequest};
use crate::runtime::{HttpGrant, Runtime, parse_duration};
use crate::store::{
    CancelOutcome, FamilyUsage, ModuleGrant, Store, TaskFilter, TaskRecord, TaskState, TaskSummary,
};
use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// Turns a client error into the right exit: bad input → 2, the rest → 1.
pub fn fail(e: ClientError) -> anyhow::Error {
    if e.is_user_error() {
        Exit::usage(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// A client under the environment's maxima (`WASMQ_MAX_FUEL`, …).
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let maxima = super::limits::env_maxima()?;
    Ok(Client::connect(url)
        .await
        .map_err(fail)?
        .with_maxima(maxima))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

// ---- modules ---------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Validate a component against the task world and store it.
    Push {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// Default: the next integer version for this name.
        #[arg(long)]
        version: Option<String>,
        /// Also grant the module's tasks HTTP requests under this URL
        /// prefix, in every queue (as `module grant`; repeatable).
        #[arg(long = "allow-http", value_name = "URL")]
        allow_http: Vec<HttpGrant>,
        #[arg(long)]
        json: bool,
    },
    /// Let the tasks of a module (every version of NAME) make HTTP requests
    /// under URL prefixes, scheme://host[:port][/path-prefix] (host may be
    /// `*.example.com` or an IP address; private and loopback addresses are
    /// refused unless the grant names the address itself), or read secrets.
    /// Workers apply a change within WASMQ_GRANT_TTL (5s).
    Grant {
        name: String,
        #[arg(
            long = "allow-http",
            value_name = "URL",
            required_unless_present = "secret"
        )]
        allow_http: Vec<HttpGrant>,
        /// Let the tasks read this secret (`wasmq secret set`) through
        /// wasi:config/store, under its name (repeatable).
        #[arg(long, value_name = "NAME")]
        secret: Vec<String>,
        /// Only for the module's tasks in this queue [default: every queue].
        #[arg(long)]
        queue: Option<String>,
    },
    /// Set plain (not secret) config values that the tasks of a module read
    /// through wasi:config/store, KEY=VALUE (one value per key and scope),
    /// or remove them with --unset KEY. A secret of the same name wins.
    Config {
        name: String,
        #[arg(value_name = "KEY=VALUE", required_unless_present = "unset")]
        entries: Vec<String>,
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
        /// Only for the module's tasks in this queue [default: every queue];
        /// a queue's own value of a key wins over every queue's.
        #[arg(long)]
        queue: Option<String>,
    },
    /// Take grants back from a module.
    Revoke {
        name: String,
        #[arg(long = "allow-http", value_name = "URL", required_unless_present_any = ["all", "secret"])]
        allow_http: Vec<HttpGrant>,
        #[arg(long, value_name = "NAME")]
        secret: Vec<String>,
        /// Every grant of the module (in --queue only, when given).
        #[arg(long, conflicts_with_all = ["allow_http", "secret"])]
        all: bool,
        /// The scope the grants were given in [default: every queue].
        #[arg(long)]
        queue: Option<String>,
    },
    /// List stored modules.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one module (`NAME` is the latest version).
    Show {
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete `NAME@VERSION` (or every version of `NAME`).
    Rm {
        reference: String,
        /// Delete even while queued or running tasks use it.
        #[arg(long)]
        force: bool,
    },
}

/// The largest module `module push` sends: the same limit as `serve`'s
/// uploads, so that what one refuses the other does too.
fn max_module_bytes() -> anyhow::Result<u64> {
    match std::env::var("WASMQ_API_MAX_MODULE") {
        Ok(v) if !v.trim().is_empty() => Ok(crate::runtime::parse_size(&v)
            .map_err(|e| Exit::usage(format!("WASMQ_API_MAX_MODULE: {e}")))?),
        _ => Ok(crate::api::DEFAULT_MAX_MODULE_BYTES as u64),
    }
}

pub async fn module(db: &str, cmd: ModuleCommand) -> anyhow::Result<()> {
    let client = connect(db).await?;
    match cmd {
        ModuleCommand::Push {
            file,
            name,
            version,
            allow_http,
            json,
        } => {
            let limit = max_module_bytes()?;
            let size = std::fs::metadata(&file)
                .map_err(|e| Exit::usage(format!("cannot read {}: {e}", file.display())))?
                .len();
            if size > limit {
                return Err(Exit::usage(format!(
                    "{} is {size} bytes, over the module size limit of {limit} bytes \
                     (WASMQ_API_MAX_MODULE)",
                    file.display()
                ))
                .into());
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| Exit::usage(format!("cannot read {}: {e}", file.display())))?;
            let runtime = Runtime::new(super::runtime_config()?.sized_for(1))?;
            let m = match client
                .push_module(&runtime, &name, version.as_deref(), bytes)
                .await
            {
                Ok(m) => m,
                Err(ClientError::Module(crate::runtime::LoadError::Module(e))) => {
                    return Err(Exit {
                        code: exit::INVALID_MODULE,
                        message: format!("{} refused ({}): {e}", file.display(), e.reason()),
                    }
                    .into());
                }
                Err(e) => return Err(fail(e)),
            };
            if !allow_http.is_empty() {
                client
                    .grant_http(&m.name, None, &allow_http)
                    .await
                    .map_err(fail)?;
            }
            if json {
                print_json(&m)?;
            } else {
                let note = if m.created { "" } else { " (already stored)" };
                let reference = format!("{}@{}", m.name, m.version);
                println!("{} sha256:{}{note}", term::line(&reference), m.sha256);
                for g in &allow_http {
                    println!("granted http {g}");
                }
            }
        }
        ModuleCommand::Grant {
            name,
            allow_http,
            secret,
            queue,
        } => {
            let mut added = 0;
            if !allow_http.is_empty() {
                added += client
                    .grant_http(&name, queue.as_deref(), &allow_http)
                    .await
                    .map_err(fail)?;
            }
            if !secret.is_empty() {
                added += client
                    .grant_secrets(&name, queue.as_deref(), &secret)
                    .await
                    .map_err(fail)?;
            }
            println!(
                "{added} new grant(s) for {} in {}",
                term::line(&name),
                scope(queue.as_deref())
            );
        }
        ModuleCommand::Config {
            name,
            entries,
            unset,
            queue,
        } => {
            let mut set = 0;
            if !entries.is_empty() {
                set = client
                    .set_config(&name, queue.as_deref(), &entries)
                    .await
                    .map_err(fail)?;
            }
            let mut removed = 0;
            if !unset.is_empty() {
                removed = client
                    .unset_config(&name, queue.as_deref(), &unset)
                    .await
                    .map_err(fail)?;
            }
            println!(
                "{set} config value(s) set, {removed} removed for {} in {}",
                term::line(&name),
                scope(queue.as_deref())
            );
        }
        ModuleCommand::Revoke {
            name,
            allow_http,
            secret,
            all,
            queue,
        } => {
            let removed = if all {
                client
                    .store()
                    .revoke_all_grants(&name, queue.as_deref())
                    .await
                    .map_err(|e| fail(e.into()))?
            } else {
                let mut removed = 0;
                if !allow_http.is_empty() {
                    removed += client
                        .revoke_http(&name, queue.as_deref(), &allow_http)
                        .await
                        .map_err(fail)?;
                }
                if !secret.is_empty() {
                    removed += client
                        .revoke_secrets(&name, queue.as_deref(), &secret)
                        .await
                        .map_err(fail)?;
                }
                removed
            };
            let of = if all && queue.is_none() {
                "every scope".to_string()
            } else {
                scope(queue.as_deref())
            };
            println!(
                "{removed} grant(s) of {} revoked in {of}",
                term::line(&name)
            );
        }
        ModuleCommand::List { json } => {
            let ms = client
                .store()
                .list_modules()
                .await
                .map_err(|e| fail(e.into()))?;
            if json {
                return print_json(&ms);
            }
            let mut t = Table::new(&["MODULE", "SIZE", "SHA256", "CREATED"]);
            for m in ms {
                t.row(vec![
                    format!("{}@{}", m.name, m.version),
                    m.size.to_string(),
                    m.sha256[..16].to_string(),
                    ts(Some(m.created_at)),
                ]);
            }
            t.print();
        }
        ModuleCommand::Show { reference, json } => {
            let (name, version) = crate::client::parse_reference(&reference).map_err(fail)?;
            let m = client
                .store()
                .resolve_module(name, version)
                .await
                .map_err(|e| fail(e.into()))?;
            let grants = client
                .store()
                .list_grants(Some(name))
                .await
                .map_err(|e| fail(e.into()))?;
            if json {
                let mut v = serde_json::to_value(&m)?;
                v["grants"] = serde_json::to_value(&grants)?;
                return print_json(&v);
            }
            println!(
                "module   {}",
                term::line(&format!("{}@{}", m.name, m.version))
            );
            println!("sha256   {}", m.sha256);
            println!("size     {} bytes", m.size);
            println!("created  {}", ts(Some(m.created_at)));
            print_grants(&grants);
        }
        ModuleCommand::Rm { reference, force } => {
            let (name, version) = crate::client::parse_reference(&reference).map_err(fail)?;
            let n = client
                .store()
                .delete_module(name, version, force)
                .await
                .map_err(|e| fail(e.into()))?;
            println!("deleted {n} version(s) of {}", term::line(name));
        }
    }
    Ok(())
}

/// `every queue` or `queue Q`.
fn scope(queue: Option<&str>) -> String {
    match queue {
        Some(q) => format!("queue {}", term::line(q)),
        None => "every queue".to_string(),
    }
}

/// The `grants` lines of `module show`: what the module's tasks may use
/// beyond clocks and randomness, and in which queues.
fn print_grants(grants: &[ModuleGrant]) {
    if grants.is_empty() {
        println!("grants   none (no network, no files)");
        return;
    }
    for (i, g) in grants.iter().enumerate() {
        let head = if i == 0 { "grants" } else { "" };
        println!(
            "{head:<8} {} {} ({})",
            g.kind.as_str(),
            term::line(&g.value),
            scope(g.queue.as_deref())
        );
    }
}

// ---- tasks -------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// `NAME` (latest version) or `NAME@VERSION`.
    pub module: String,
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    #[arg(long, default_value = crate::client::DEFAULT_QUEUE)]
    pub queue: String,
    /// -100..100, higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i16,
    /// Not before this time (RFC 3339).
    #[arg(long, conflicts_with = "delay")]
    pub run_after: Option<DateTime<Utc>>,
    /// Not before this long from now, e.g. 10s.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    #[arg(long, default_value_t = crate::client::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Deduplicate against unfinished tasks with the same key.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Limits of this task (default: the worker's).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Follow the task and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Enqueue a task; prints its id.
    Enqueue(EnqueueArgs),
    /// Enqueue one task per line of FILE (JSON lines), in one transaction.
    EnqueueBatch {
        module: String,
        file: PathBuf,
        #[arg(long, default_value = crate::client::DEFAULT_QUEUE)]
        queue: String,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i16,
        #[arg(long, default_value_t = crate::client::DEFAULT_MAX_ATTEMPTS)]
        max_attempts: u32,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        state: Option<TaskState>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        module: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// A task with its attempts, error, logs and result.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued task, or ask the worker of a running one to stop it.
    Cancel { id: Uuid },
    /// Requeue a failed or cancelled task.
    Retry { id: Uuid },
    /// Delete finished tasks in STATE older than DURATION.
    Purge {
        #[arg(long)]
        state: TaskState,
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
}

pub async fn task(db: &str, cmd: TaskCommand) -> anyhow::Result<u8> {
    let client = connect(db).await?;
    match cmd {
        TaskCommand::Enqueue(a) => return enqueue(&client, a).await,
        TaskCommand::EnqueueBatch {
            module,
            file,
            queue,
            priority,
            max_attempts,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Exit::usage(format!("cannot read {}: {e}", file.display())))?;
            let mut tasks = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let mut req = EnqueueRequest::new(module.clone(), line);
                req.queue = queue.clone();
                req.priority = priority;
                req.max_attempts = max_attempts;
                let task = client
                    .new_task(req)
                    .await
                    .map_err(|e| Exit::usage(format!("{}:{}: {e}", file.display(), n + 1)))?;
                tasks.push(task);
            }
            let out = client
                .store()
                .enqueue_batch(&tasks)
                .await
                .map_err(|e| fail(e.into()))?;
            println!(
                "enqueued {} task(s) on queue {}",
                out.len(),
                term::line(&queue)
            );
        }
        TaskCommand::List {
            state,
            queue,
            module,
            limit,
            json,
        } => {
            let tasks = client
                .store()
                .list_tasks(&TaskFilter {
                    state,
                    queue,
                    module,
                    limit,
                    before_seq: None,
                })
                .await
                .map_err(|e| fail(e.into()))?;
            if json {
                print_json(&tasks)?;
            } else {
                print_tasks(&tasks);
            }
        }
        TaskCommand::Show { id, json } => {
            let t = client.get(id).await.map_err(fail)?;
            let attempts = client
                .store()
                .list_attempts(id)
                .await
                .map_err(|e| fail(e.into()))?;
            let store = client.store();
            let (children, usage) = if t.children > 0 {
                let children = store
                    .list_children(id, 0, SHOWN_CHILDREN)
                    .await
                    .map_err(|e| fail(e.into()))?;
                let usage = store.family_usage(id).await.map_err(|e| fail(e.into()))?;
                (children, Some(usage))
            } else {
                (Vec::new(), None)
            };
            if json {
                return print_json(&serde_json::json!({
                    "task": t,
                    "attempts": attempts,
                    "children": children,
                    "descendants": usage,
                }))
                .map(|()| exit::SUCCESS);
            }
            show_task(&t);
            if let Some(usage) = usage {
                show_children(&t, &children, usage);
            }
            println!("\nattempts:");
            let mut table = Table::new(&[
                "#", "WORKER", "STARTED", "OUTCOME", "MS", "FUEL", "PEAK MEM", "ERROR",
            ]);
            for a in &attempts {
                table.row(vec![
                    a.attempt.to_string(),
                    a.worker_id.clone(),
                    ts(Some(a.started_at)),
                    a.outcome_name().unwrap_or("(running)").to_string(),
                    a.duration_ms.map_or("-".into(), |d| d.to_string()),
                    a.fuel_used.map_or("-".into(), |d| d.to_string()),
                    a.peak_memory.map_or("-".into(), |d| d.to_string()),
                    clip(a.error_message.as_deref().unwrap_or(""), 60),
                ]);
            }
            table.print();
            for a in &attempts {
                if let Some(job) = &a.ray_submission_id {
                    let node = a
                        .ray_node_id
                        .as_deref()
                        .map_or(String::new(), |n| format!(" on node {}", term::line(n)));
                    println!(
                        "attempt {} ran as Ray job {}{node}",
                        a.attempt,
                        term::line(job)
                    );
                }
            }
            // Each attempt's guest log() lines, then its stdout and stderr.
            for a in &attempts {
                if let Some(logs) = a.logs.as_deref().filter(|l| !l.is_empty()) {
                    println!(
                        "\nlogs of attempt {}:\n{}",
                        a.attempt,
                        term::text(logs.trim_end())
                    );
                }
            }
        }
        TaskCommand::Cancel { id } => match client.cancel(id).await.map_err(fail)? {
            CancelOutcome::Cancelled => println!("{id} cancelled"),
            CancelOutcome::Requested => {
                println!("{id} is live: its worker has been asked to stop it")
            }
            CancelOutcome::AlreadyFinished(s) => println!("{id} had already finished: {s}"),
        },
        TaskCommand::Retry { id } => {
            let t = client.retry(id).await.map_err(fail)?;
            println!(
                "{id} requeued (attempt {} of {})",
                t.attempt + 1,
                t.max_attempts
            );
        }
        TaskCommand::Purge { state, older_than } => {
            let cutoff = Utc::now() - chrono::Duration::from_std(older_than)?;
            let n = client
                .store()
                .purge(state, cutoff)
                .await
                .map_err(|e| fail(e.into()))?;
            println!("purged {n} {state} task(s)");
        }
    }
    Ok(exit::SUCCESS)
}

async fn enqueue(client: &Client, a: EnqueueArgs) -> anyhow::Result<u8> {
    let input = super::run::read_input(a.input.as_deref(), a.input_file.as_deref())?;
    let run_after = match (a.run_after, a.delay) {
        (Some(t), _) => Some(t),
        (None, Some(d)) => Some(Utc::now() + chrono::Duration::from_std(d)?),
        _ => None,
    };
    let req = EnqueueRequest {
        module: a.module,
        input,
        queue: a.queue,
        priority: a.priority,
        run_after,
        max_attempts: a.max_attempts,
        unique_key: a.unique_key,
        limits: a.limits.task_limits(),
    };
    let out = client.enqueue(req).await.map_err(fail)?;
    if !a.wait {
        if a.json {
            print_json(&out)?;
        } else if out.deduplicated {
            println!(
                "{} (deduplicated: an unfinished task has this unique key)",
                out.id
            );
        } else {
            println!("{}", out.id);
        }
        return Ok(exit::SUCCESS);
    }
    eprintln!("{}", out.id);
    let t = client
        .wait(out.id, |t| {
            let progress = match (t.progress_percent, &t.progress_message) {
                (Some(p), Some(m)) => format!(" {p}% {m}"),
                (Some(p), None) => format!(" {p}%"),
                _ => String::new(),
            };
            eprintln!(
                "  {} attempt {}/{}{}",
                t.state,
                t.attempt,
                t.max_attempts,
                term::line(&progress)
            );
        })
        .await
        .map_err(fail)?;
    if a.json {
        print_json(&t)?;
    } else if let Some(r) = &t.result {
        println!("{}", term::stdout_data(r));
    }
    if let Some(m) = &t.error_message {
        eprintln!(
            "{}: {}",
            t.error_kind.as_deref().unwrap_or("error"),
            term::text(m)
        );
    }
    Ok(match t.state {
        TaskState::Succeeded => exit::SUCCESS,
        TaskState::Cancelled => exit::CANCELLED,
        _ => exit::for_kind(t.error_kind.as_deref().unwrap_or("")),
    })
}

fn print_tasks(tasks: &[TaskSummary]) {
    let mut t = Table::new(&[
        "ID",
        "MODULE",
        "QUEUE",
        "PRI",
        "STATE",
        "ATTEMPT",
        "RESULT / ERROR",
    ]);
    for task in tasks {
        let detail = match (&task.result_preview, &task.error_preview) {
            (Some(r), _) if task.state == TaskState::Succeeded => r.clone(),
            (_, Some(e)) => format!("{}: {}", task.error_kind.as_deref().unwrap_or("error"), e),
            _ => String::new(),
        };
        t.row(vec![
            task.id.to_string(),
            format!("{}@{}", task.module_name, task.module_version),
            task.queue.clone(),
            task.priority.to_string(),
            task.state.to_string(),
            format!("{}/{}", task.attempt, task.max_attempts),
            clip(&detail, 70),
        ]);
    }
    t.print();
}

/// Every field that a guest or a client wrote goes through [`term`].
fn show_task(t: &TaskRecord) {
    println!("task      {}", t.id);
    println!(
        "module    {} (sha256 {})",
        term::line(&format!("{}@{}", t.module_name, t.module_version)),
        t.module_sha256
    );
    println!(
        "queue     {} (priority {})",
        term::line(&t.queue),
        t.priority
    );
    println!("state     {}", t.state);
    if t.free_runs > 0 {
        // Free runs (resumes after a wait, releases at shutdown) spend no
        // attempt; the table below lists every run.
        println!(
            "attempt   {} of {} ({} runs, {} free)",
            t.counted_attempts(),
            t.max_attempts,
            t.attempt,
            t.free_runs
        );
    } else {
        println!("attempt   {} of {}", t.attempt, t.max_attempts);
    }
    if let Some(parent) = t.parent_id {
        match t.spawn_seq {
            Some(seq) => println!("parent    {parent} (spawn #{seq}, depth {})", t.depth),
            None => println!("parent    {parent}"),
        }
    }
    if t.state == TaskState::Waiting {
        println!("waiting   for {} more of its children", t.waiting_on);
    }
    if let Some(p) = t.progress_percent {
        println!(
            "progress  {p}% {}",
            term::line(t.progress_message.as_deref().unwrap_or(""))
        );
    }
    println!("enqueued  {}", ts(Some(t.enqueued_at)));
    println!("run after {}", ts(Some(t.run_after)));
    println!("started   {}", ts(t.started_at));
    println!("finished  {}", ts(t.finished_at));
    if let Some(o) = &t.lease_owner {
        println!(
            "lease     {} until {}",
            term::line(o),
            ts(t.lease_expires_at)
        );
    }
    if t.cancel_requested {
        println!("cancel    requested");
    }
    if let Some(job) = &t.ray_submission_id {
        println!("ray job   {}", term::line(job));
    }
    println!("input     {}", term::line(&clip(&t.input, 200)));
    if let Some(r) = &t.result {
        println!("result    {}", term::text(r));
    }
    if let Some(e) = &t.error_message {
        println!(
            "error     {}: {}",
            term::line(t.error_kind.as_deref().unwrap_or("error")),
            term::text(e)
        );
    }
}

/// Children listed by `task show`; the API pages through all of them.
const SHOWN_CHILDREN: u32 = 20;

/// A parent's children: counts by state of the first ones, what all
/// descendants used, and the first ones listed.
fn show_children(t: &TaskRecord, children: &[TaskSummary], usage: FamilyUsage) {
    println!(
        "children  {} ({} descendants in all; their runs used {} fuel in {} ms)",
        t.children, usage.descendants, usage.fuel_used, usage.duration_ms
    );
    println!("\nchildren (first {}):", children.len());
    let mut table = Table::new(&["#", "ID", "MODULE", "STATE", "RESULT / ERROR"]);
    for c in children {
        table.row(vec![
            c.spawn_seq.map_or("-".into(), |s| s.to_string()),
            c.id.to_string(),
            term::line(&format!("{}@{}", c.module_name, c.module_version)).into_owned(),
            c.state.to_string(),
            term::line(&clip(
                c.result_preview
                    .as_deref()
                    .or(c.error_preview.as_deref())
                    .unwrap_or(""),
                60,
            ))
            .into_owned(),
        ]);
    }
    table.print();
}

// ---- workers -------------------------------------------------------------------

pub async fn workers(db: &str, json: bool) -> anyhow::Result<()> {
    let client = connect(db).await?;
    let ws = client
        .store()
        .list_workers()
        .await
        .map_err(|e| fail(e.into()))?;
    if json {
        return print_json(&ws);
    }
    let now = Utc::now();
    let mut t = Table::new(&[
        "WORKER",
        "MODE",
        "QUEUES",
        "CONC",
        "RUNNING",
        "HEARTBEAT AGO",
        "STATUS",
    ]);
    for w in ws {
        t.row(vec![
            w.id,
            w.mode,
            w.queues.to_string(),
            w.concurrency.to_string(),
            w.running_tasks.to_string(),
            format!(
                "{:.1}s",
                (now - w.last_heartbeat_at).num_milliseconds() as f64 / 1000.0
            ),
            if w.stopped_at.is_some() {
                "stopped".into()
            } else {
                "alive".into()
            },
        ]);
    }
    t.print();
    Ok(())
}

pub async fn migrate(db: &str) -> anyhow::Result<()> {
    connect(db).await.context("migrating")?;
    println!("database is up to date");
    Ok(())
}
