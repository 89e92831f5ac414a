//! CPU accounting for the benches: the bench's own child processes, and a
//! database server's processes, read from the kernel rather than estimated.

use std::path::Path;
use std::time::Duration;

/// User + system CPU of every child process this process has waited for.
/// The difference around a child's life is that child's CPU.
pub(super) fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A local server made of processes named `comm` (PostgreSQL: a postmaster
/// and one process per connection and per background job).
pub(super) struct ServerCpu {
    comm: String,
    ticks_per_sec: u64,
}

impl ServerCpu {
    /// `None` when no process of that name runs here (a remote server).
    pub(super) fn find(comm: &str) -> Option<ServerCpu> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let s = ServerCpu {
            comm: comm.to_owned(),
            ticks_per_sec: u64::try_from(ticks).ok().filter(|&t| t > 0)?,
        };
        let running = s.processes().next().is_some();
        running.then_some(s)
    }

    /// CPU the server has used so far: its live processes' own time, plus
    /// what its exited children used (the postmaster reaps each backend,
    /// so a connection that closed during a run is still counted).
    pub(super) fn total(&self) -> Duration {
        let ticks: u64 = self
            .processes()
            .map(|f| f.utime + f.stime + f.cutime + f.cstime)
            .sum();
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / self.ticks_per_sec)
    }

    fn processes(&self) -> impl Iterator<Item = StatFields> + '_ {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_stat(&e.path().join("stat")))
            .filter(|f| f.comm == self.comm)
    }
}

struct StatFields {
    comm: String,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Fields 2 and 14–17 of `/proc/PID/stat`. The name is in parentheses and
/// may itself hold spaces and parentheses, so the rest is split after the
/// last `)`.
fn read_stat(path: &Path) -> Option<StatFields> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(text: &str) -> Option<StatFields> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After the name: field 3 (state) is index 0, so field N is N - 3.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| {
        rest.get(n - 3)?
            .parse::<i64>()
            .ok()
            .map(|v| v.max(0) as u64)
    };
    Some(StatFields {
        comm,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (post gres) (x)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18";
        let f = parse_stat(line).unwrap();
        assert_eq!(f.comm, "post gres) (x)");
        // Fields 14..17 are the 12th..15th numbers after the state.
        assert_eq!((f.utime, f.stime, f.cutime, f.cstime), (11, 12, 13, 14));
    }

    #[test]
    fn this_process_has_a_readable_stat() {
        let f = read_stat(Path::new("/proc/self/stat")).unwrap();
        assert!(!f.comm.is_empty());
    }
}
