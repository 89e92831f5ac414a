//! A private Ray head for the cluster tests: Ray from the project's venv
//! (`scripts/setup.sh`), on loopback, with free ports, token auth on, its
//! own temp dir and token file. Stopped (by process id: only the processes
//! of this head) when dropped.
//!
//! Without Ray the tests skip, unless `CI=true`, where they fail.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct RayHead {
    ray: PathBuf,
    /// Temp dir of Ray's sessions; short, as Ray's Unix sockets live in it.
    dir: PathBuf,
    pub token_file: PathBuf,
    gcs_port: u16,
    dashboard_port: u16,
    client_port: u16,
    pub address: String,
}

fn venv() -> PathBuf {
    std::env::var_os("WASMQ_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/wasmq/venv"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl RayHead {
    /// Starts a head, or returns `None` (outside CI) when Ray is not installed.
    pub fn start() -> Option<RayHead> {
        let ray = venv().join("bin/ray");
        if !ray.exists() {
            let msg = format!(
                "Ray is not installed at {} (run scripts/setup.sh)",
                ray.display()
            );
            assert!(!in_ci(), "{msg}");
            eprintln!("SKIP: {msg}");
            return None;
        }
        let dir = PathBuf::from(format!("/tmp/wqray-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let token_file = dir.join("auth_token");
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        std::fs::write(&token_file, token).unwrap();
        let dashboard_port = free_port();
        let head = RayHead {
            ray,
            gcs_port: free_port(),
            dashboard_port,
            client_port: free_port(),
            address: format!("http://127.0.0.1:{dashboard_port}"),
            token_file,
            dir,
        };
        head.up();
        Some(head)
    }

    /// `ray …` from the venv, with this head's token and a private HOME.
    pub fn ray_cmd(&self) -> Command {
        let mut c = Command::new(&self.ray);
        c.envs(self.ray_env()).env_remove("RAY_AUTH_TOKEN");
        c
    }

    /// The environment of every `ray` command of this head.
    fn ray_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOME", self.dir.join("home").display().to_string()),
            // The nodes' runners keep their module cache here (a CI's own
            // XDG_CACHE_HOME would otherwise be shared with the test).
            ("XDG_CACHE_HOME", self.node_cache().display().to_string()),
            ("RAY_AUTH_TOKEN_PATH", self.token_file.display().to_string()),
            ("RAY_AUTH_MODE", "token".into()),
            ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0".into()),
            ("RAY_USAGE_STATS_ENABLED", "0".into()),
            ("RAY_ADDRESS", self.address.clone()),
        ]
    }

    /// `ray start --head` on the same ports; panics if it does not come up.
    pub fn up(&self) {
        let t = Instant::now();
        let out = self
            .ray_cmd()
            .env_remove("RAY_ADDRESS")
            .args(["start", "--head", "--node-ip-address=127.0.0.1"])
            .arg(format!("--port={}", self.gcs_port))
            .arg("--dashboard-host=127.0.0.1")
            .arg(format!("--dashboard-port={}", self.dashboard_port))
            .arg(format!("--ray-client-server-port={}", self.client_port))
            .arg(format!("--temp-dir={}", self.dir.join("t").display()))
            .args([
                "--num-cpus=4",
                "--include-dashboard=true",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ray start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("ray head up at {} in {:?}", self.address, t.elapsed());
    }

    /// Stops this head's processes (SIGTERM, then SIGKILL after 10 s).
    pub fn down(&self) {
        stop_all(&self.pids());
        // The dashboard must be gone before anyone relies on it being down.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until
            && std::net::TcpStream::connect(("127.0.0.1", self.dashboard_port)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every process of this head and of the nodes joined to it: those
    /// naming its temp dir or GCS address, and their descendants.
    fn pids(&self) -> Vec<i32> {
        pids_marked(&[
            self.dir.display().to_string(),
            format!("127.0.0.1:{}", self.gcs_port),
        ])
    }

    /// Joins a second node to this head's cluster, on loopback with ports
    /// of its own (two nodes on one machine: every listener of each needs a
    /// port of its own, the dashboard agent's fixed 52365 above all).
    ///
    /// Two things make one machine look like two:
    /// - `ray start --address` refuses to start a node while
    ///   `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, and with it on, rewrites
    ///   127.0.0.1 to the address of the default route: the node would
    ///   listen beyond loopback. So the CLI runs from a shim that lifts only
    ///   those two checks of its own process; the node's processes inherit
    ///   `=0` and listen on 127.0.0.1 only, as the head's do.
    /// - A dashboard agent finds "its" node among the raylets it sees in
    ///   the process table, preferring the head: the second node's agent
    ///   would serve the logs of the head's folder, and a job that ran on
    ///   the second node would have no output. So the node runs in a PID
    ///   namespace of its own (`unshare --pid --mount-proc`, root), where it
    ///   sees only its own processes, as on a machine of its own; it shares
    ///   the network and the files. `ray start --block` is that namespace's
    ///   first process: when it ends, the kernel ends the whole node.
    pub fn add_node(&self, num_cpus: u32) -> RayNode {
        let dir = self.dir.join(format!("n{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let shim = dir.join("ray_start_node.py");
        std::fs::write(&shim, NODE_SHIM).unwrap();
        let log = dir.join("ray-start.log");
        let python = self.ray.with_file_name("python");
        let t = Instant::now();
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(python)
            .envs(self.ray_env())
            .env_remove("RAY_AUTH_TOKEN")
            .env_remove("RAY_ADDRESS")
            .arg(&shim)
            .args(["start", "--block", "--node-ip-address=127.0.0.1"])
            .arg(format!("--address=127.0.0.1:{}", self.gcs_port))
            .arg(format!("--temp-dir={}", dir.display()))
            .arg(format!("--num-cpus={num_cpus}"))
            .arg(format!("--node-manager-port={}", free_port()))
            .arg(format!("--object-manager-port={}", free_port()))
            .arg(format!("--dashboard-agent-listen-port={}", free_port()))
            .arg(format!("--dashboard-agent-grpc-port={}", free_port()))
            .arg(format!("--runtime-env-agent-port={}", free_port()))
            .arg(format!("--metrics-export-port={}", free_port()))
            // 0: each worker takes a port of the kernel's choosing, not one
            // of the head's range.
            .args(["--min-worker-port=0", "--max-worker-port=0"])
            .args(["--disable-usage-stats", "--object-store-memory=100000000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("ray-start.err")).unwrap())
            .spawn()
            .expect("unshare (util-linux) runs the second node");
        let mut node = RayNode { dir, child };
        let until = Instant::now() + Duration::from_secs(90);
        while node.raylet_pid().is_none() {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!(
                    "the second node's ray start ended with {status}:\n{}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(node.dir.join("ray-start.err")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < until,
                "the second node's raylet never started"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("ray node {} started in {:?}", node.id(), t.elapsed());
        node
    }

    /// Freezes (SIGSTOP) this head's dashboard processes, so that every
    /// REST call hangs without an answer, as on a cluster that stopped
    /// responding; they resume when the guard drops.
    pub fn freeze_dashboard(&self) -> Frozen {
        let pids: Vec<i32> = self
            .pids()
            .into_iter()
            .filter(|&p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.contains("dashboard") && !cmd.contains("agent")
            })
            .collect();
        assert!(!pids.is_empty(), "no dashboard process found");
        for &p in &pids {
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        Frozen(pids)
    }

    /// `ray job list` output (Ray's own CLI).
    pub fn job_list(&self) -> String {
        let out = self.ray_cmd().args(["job", "list"]).output().unwrap();
        assert!(
            out.status.success(),
            "ray job list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether Ray's state API lists node `id` as ALIVE.
    pub fn node_alive(&self, id: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.dashboard_port)) else {
            return false;
        };
        let token = std::fs::read_to_string(&self.token_file).unwrap();
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "GET /api/v0/nodes?limit=100 HTTP/1.0\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {}\r\n\r\n",
            token.trim()
        );
        let mut response = String::new();
        if c.write_all(request.as_bytes()).is_err() || c.read_to_string(&mut response).is_err() {
            return false;
        }
        let Some((_, body)) = response.split_once("\r\n\r\n") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            return false;
        };
        v.pointer("/data/result/result")
            .and_then(|r| r.as_array())
            .is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["node_id"].as_str() == Some(id) && n["state"].as_str() == Some("ALIVE")
                })
            })
    }

    /// The cache folder of the nodes' runners; `wasmq/` in it holds their
    /// precompiled modules.
    pub fn node_cache(&self) -> PathBuf {
        self.dir.join("home").join(".cache")
    }

    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }
}

/// Runs Ray's CLI with the two checks of [`RayHead::add_node`] lifted.
const NODE_SHIM: &str = "\
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = 'ray'
sys.exit(main())
";

/// A node joined to a [`RayHead`]; its processes are stopped when it is
/// dropped (and with the head's, since they name its GCS address).
pub struct RayNode {
    dir: PathBuf,
    /// `unshare … ray start --block`: the node's PID namespace lives as
    /// long as it does.
    child: std::process::Child,
}

impl RayNode {
    /// The raylet's process id and command line.
    fn raylet(&self) -> Option<(i32, String)> {
        raylet_in(self.processes())
    }

    /// The raylet's process id.
    pub fn raylet_pid(&self) -> Option<i32> {
        self.raylet().map(|(pid, _)| pid)
    }

    /// The node's id, as Ray names it in `driver_node_id`.
    pub fn id(&self) -> String {
        let (_, cmd) = self.raylet().expect("the node has a raylet");
        cmd.split(' ')
            .find_map(|a| a.strip_prefix("--node_id="))
            .expect("the raylet names its node id")
            .to_string()
    }

    /// Loses the node, as when its machine goes away: SIGKILL to its
    /// raylet first, then to every other process of it (the job's runner
    /// included).
    pub fn lose(&self) {
        let all = self.processes();
        let (raylet, _) = raylet_in(all.clone()).expect("the node's raylet runs");
        unsafe { libc::kill(raylet, libc::SIGKILL) };
        for (p, _) in all {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }

    fn processes(&self) -> Vec<(i32, String)> {
        pids_marked(&[self.dir.display().to_string()])
            .into_iter()
            .filter_map(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                Some((p, cmd))
            })
            .collect()
    }
}

/// The raylet among a node's processes (pid, command line).
fn raylet_in(processes: Vec<(i32, String)>) -> Option<(i32, String)> {
    processes
        .into_iter()
        .find(|(_, cmd)| cmd.contains("/raylet/raylet "))
}

impl Drop for RayNode {
    fn drop(&mut self) {
        stop_all(&pids_marked(&[self.dir.display().to_string()]));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM to `pids`, then SIGKILL to those alive after 10 s.
fn stop_all(pids: &[i32]) {
    for &p in pids {
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in pids {
        if alive(p) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Every process whose command line contains one of `marks`, and their
/// descendants; never this test process.
fn pids_marked(marks: &[String]) -> Vec<i32> {
    let mut parent: HashMap<i32, i32> = HashMap::new();
    let mut set = HashSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmd)) = (
            std::fs::read_to_string(e.path().join("stat")),
            std::fs::read(e.path().join("cmdline")),
        ) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        parent.insert(pid, ppid);
        let cmd = String::from_utf8_lossy(&cmd);
        if marks.iter().any(|m| cmd.contains(m.as_str())) {
            set.insert(pid);
        }
    }
    loop {
        let more: Vec<i32> = parent
            .iter()
            .filter(|(p, pp)| set.contains(pp) && !set.contains(p))
            .map(|(p, _)| *p)
            .collect();
        if more.is_empty() {
            break;
        }
        set.extend(more);
    }
    set.remove(&(std::process::id() as i32));
    set.into_iter().collect()
}

/// Frozen processes, resumed (SIGCONT) when dropped.
pub struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

fn alive(pid: i32) -> bool {
    // Zombies count as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

impl Drop for RayHead {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
