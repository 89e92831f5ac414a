//! Tries to reach outside the sandbox and reports what it saw. Every probe
//! should come back `"ok": false`; `true` means that escape worked.
//!
//! The task itself always succeeds: its output is the report, one
//! `{"ok": bool, "detail": string}` per probe. See the README for the list.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmq_guest::{Context, TaskError};

#[derive(Deserialize)]
#[serde(default)]
struct Input {
    /// Where the TCP probe connects (a local Postgres by default).
    tcp_addr: String,
    /// Which file the write probe creates.
    write_path: String,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            tcp_addr: "127.0.0.1:5432".to_owned(),
            write_path: "/tmp/wasmq-escape".to_owned(),
        }
    }
}

/// One escape attempt; `ok` is true when it got through.
#[derive(Serialize)]
struct Probe {
    ok: bool,
    detail: String,
}

impl Probe {
    fn escaped(detail: impl Into<String>) -> Self {
        Probe {
            ok: true,
            detail: detail.into(),
        }
    }

    fn blocked(detail: impl ToString) -> Self {
        Probe {
            ok: false,
            detail: detail.to_string(),
        }
    }
}

impl<T: Into<String>, E: ToString> From<Result<T, E>> for Probe {
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(detail) => Probe::escaped(detail),
            Err(err) => Probe::blocked(err),
        }
    }
}

#[derive(Serialize)]
struct Report {
    read_passwd: Probe,
    list_root: Probe,
    env: Probe,
    args: Probe,
    tcp_connect: Probe,
    write_file: Probe,
}

fn run(ctx: &Context, input: Input) -> Result<Report, TaskError> {
    let report = Report {
        read_passwd: read_passwd(),
        list_root: list_root(),
        env: env(),
        args: args(),
        tcp_connect: tcp_connect(&input.tcp_addr),
        write_file: write_file(&input.write_path),
    };
    if [
        &report.read_passwd,
        &report.list_root,
        &report.env,
        &report.args,
        &report.tcp_connect,
        &report.write_file,
    ]
    .iter()
    .any(|probe| probe.ok)
    {
        ctx.log_warn("at least one escape probe got through the sandbox");
    }
    Ok(report)
}

fn read_passwd() -> Probe {
    fs::read_to_string("/etc/passwd")
        .map(|text| format!("read {} lines", text.lines().count()))
        .into()
}

fn list_root() -> Probe {
    fs::read_dir("/")
        .and_then(|entries| {
            let names = entries
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("listed: {}", names.join(", ")))
        })
        .into()
}

/// Any visible variable counts as an escape; names only, never values.
fn env() -> Probe {
    let names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    let home = std::env::var_os("HOME").is_some();
    let path = std::env::var_os("PATH").is_some();
    let detail = format!(
        "{} variables visible ({}); HOME {}, PATH {}",
        names.len(),
        names.join(", "),
        if home { "set" } else { "unset" },
        if path { "set" } else { "unset" },
    );
    Probe {
        ok: !names.is_empty() || home || path,
        detail,
    }
}

/// Command-line arguments would leak how the host was invoked.
fn args() -> Probe {
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    Probe {
        ok: !args.is_empty(),
        detail: format!("{} arguments visible: {:?}", args.len(), args),
    }
}

fn tcp_connect(addr: &str) -> Probe {
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(err) => return Probe::blocked(format!("bad address {addr:?}: {err}")),
    };
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(|_| format!("connected to {addr}"))
        .into()
}

fn write_file(path: &str) -> Probe {
    fs::File::create(path)
        .and_then(|mut file| file.write_all(b"wasmq sandbox escape\n"))
        .map(|()| format!("wrote {path}"))
        .into()
}

wasmq_guest::export_task!(run);
