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
        c.env("HOME", self.dir.join("home"))
            .env("RAY_AUTH_TOKEN_PATH", &self.token_file)
            .env_remove("RAY_AUTH_TOKEN")
            .env("RAY_AUTH_MODE", "token")
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .env("RAY_ADDRESS", &self.address);
        c
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
        let pids = self.pids();
        for &p in &pids {
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && pids.iter().any(|&p| alive(p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for &p in &pids {
            if alive(p) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        // The dashboard must be gone before anyone relies on it being down.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until
            && std::net::TcpStream::connect(("127.0.0.1", self.dashboard_port)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every process of this head: those naming its temp dir or GCS
    /// address, and their descendants.
    fn pids(&self) -> Vec<i32> {
        let marks = [
            self.dir.display().to_string(),
            format!("127.0.0.1:{}", self.gcs_port),
        ];
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

    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }
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
