//! How a cluster worker packs claimed tasks into Ray jobs, and how the tasks
//! of one job share what Ray says about it.
//!
//! A Ray job costs about a CPU-second of Python supervisor on the head,
//! whatever it runs, so tasks of one module and queue that are claimed
//! together travel in one job ([`OpenBatch`]). Each task still has its own
//! attempt, lease and completion: the batch only decides which job runs it.
//! The tasks of a job follow it through one [`Watch`] (one status poll and
//! one log read per job, not per task), and each task leaves the watch once:
//! with its result read, cancelled, or interrupted by the worker's
//! shutdown. What the job's end means for the job itself (stop it, delete
//! it, leave it for the next worker) follows from how its tasks left.

use super::envelope::Envelope;
use super::grants::TaskGrants;
use crate::ray::{JobDetails, RayError};
use crate::runtime::Limits;
use crate::runtime::subtasks::SubtaskPlan;
use crate::store::ClaimedTask;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use uuid::Uuid;

/// Most tasks a cluster worker packs into one Ray job (`--ray-batch`).
pub const DEFAULT_RAY_BATCH: u32 = 64;
/// The largest `--ray-batch`: the job's metadata lists every task of it.
pub const MAX_RAY_BATCH: u32 = 256;
/// How long a batch waits for more tasks once a job slot is free. Tasks
/// claimed together reach the batcher within microseconds of each other;
/// this only has to outlast that, not wait for the next claim.
pub const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// What tasks must share to travel in one job: the package (the module's
/// bytes) and what the job's environment grants (by module name and queue).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub module_sha256: String,
    pub module_name: String,
    pub queue: String,
}

impl BatchKey {
    pub fn of(task: &ClaimedTask) -> BatchKey {
        BatchKey {
            module_sha256: task.module_sha256.clone(),
            module_name: task.module_name.clone(),
            queue: task.queue.clone(),
        }
    }
}

/// What a granted task's runner needs.
#[derive(Clone)]
pub struct Shipment {
    pub grants: Arc<TaskGrants>,
    /// The worker's `--http-ca-file`, PEM.
    pub ca_pem: Option<Arc<str>>,
    /// The worker's `WASMQ_SECRET_KEY_FILE`, which must hold the same key
    /// on the Ray nodes.
    pub key_file: Option<PathBuf>,
}

/// One task waiting in a batch, with what its run gets.
pub struct Member {
    pub task: ClaimedTask,
    pub limits: Limits,
    pub plan: SubtaskPlan,
}

impl Member {
    /// About how many bytes the task adds to its batch as the runner gets
    /// it: its input, its recorded children, and the fixed fields.
    pub fn size(&self) -> usize {
        self.task.input.len() + 128 * self.plan.known.len() + 512
    }
}

/// How a batch's submission ended, for each of its tasks.
#[derive(Clone)]
pub enum Joined {
    /// The job runs the task.
    Job(Arc<Watch>),
    /// The cluster answered with an error: no job runs the batch.
    Ray(RayError),
    /// A local failure (module bytes, package): a host error.
    Host(String),
}

/// Tasks gathering for one job, until its submitter closes it.
pub struct OpenBatch {
    pub key: BatchKey,
    /// The grants of the first task: the key makes them the same for all.
    pub granted: Option<Shipment>,
    members: Mutex<Gathering>,
    /// A task joined or withdrew.
    pub changed: Notify,
    joined: watch::Sender<Option<Joined>>,
}

struct Gathering {
    members: Vec<Member>,
    closed: bool,
}

impl OpenBatch {
    pub fn new(first: Member, granted: Option<Shipment>) -> OpenBatch {
        OpenBatch {
            key: BatchKey::of(&first.task),
            granted,
            members: Mutex::new(Gathering {
                members: vec![first],
                closed: false,
            }),
            changed: Notify::new(),
            joined: watch::channel(None).0,
        }
    }

    /// Adds `member` unless the batch is closed, holds `max` tasks
    /// already, or would outgrow `max_bytes` (so that it still travels in
    /// the job's environment, not in a package of its own); gives it back
    /// then.
    pub fn try_join(
        &self,
        member: Member,
        max: usize,
        max_bytes: usize,
    ) -> Result<(), Box<Member>> {
        let mut g = self.members.lock().unwrap();
        let bytes: usize = g.members.iter().map(Member::size).sum();
        if g.closed || g.members.len() >= max || bytes + member.size() > max_bytes {
            return Err(Box::new(member));
        }
        g.members.push(member);
        drop(g);
        self.changed.notify_one();
        Ok(())
    }

    /// Takes `task` out of the batch if it has not been submitted yet.
    /// False: the batch is closed, and its job (if submitted) runs the task.
    pub fn withdraw(&self, task: Uuid) -> bool {
        let mut g = self.members.lock().unwrap();
        if g.closed {
            return false;
        }
        g.members.retain(|m| m.task.id != task);
        drop(g);
        self.changed.notify_one();
        true
    }

    /// Closes the batch if no task is left in it.
    pub fn close_if_empty(&self) -> bool {
        let mut g = self.members.lock().unwrap();
        if g.members.is_empty() {
            g.closed = true;
        }
        g.closed && g.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.lock().unwrap().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the gathering: the tasks that go into the job, most urgent
    /// first. Claimed tasks reach the batch from tasks of their own, in
    /// whatever order the scheduler runs them; the runner starts runs in
    /// the batch's order, so with fewer CPUs than tasks a late, long task
    /// would otherwise hold up an earlier, short one.
    pub fn close(&self) -> Vec<Member> {
        let mut g = self.members.lock().unwrap();
        g.closed = true;
        let mut members = std::mem::take(&mut g.members);
        members.sort_by_key(|m| (std::cmp::Reverse(m.task.priority), m.task.enqueued_at));
        members
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Joined>> {
        self.joined.subscribe()
    }

    pub fn announce(&self, joined: Joined) {
        self.joined.send_replace(Some(joined));
    }
}

/// What Ray said at the end of a job, once for all its tasks.
pub enum JobEnd {
    /// Terminal; the logs when the job ran (succeeded or failed), or the
    /// error reading them.
    Terminal {
        job: Box<JobDetails>,
        logs: Option<Result<Arc<str>, RayError>>,
    },
    /// Still PENDING at the pending timeout; stopped (or tried). The
    /// message says so.
    PendingTimeout(String),
    /// Following the job failed: the cluster is unreachable, or the job
    /// vanished.
    Lost(RayError),
}

/// What the tasks of a job have seen of it so far: the envelopes in its
/// logs as read while it ran, by task id (a run's envelope is final once
/// printed, so a task can end before its batch does), then its end.
#[derive(Clone, Default)]
pub struct Seen {
    pub envelopes: Arc<HashMap<String, Envelope>>,
    pub end: Option<Arc<JobEnd>>,
    /// The Ray node the job runs on, once Ray has said.
    pub node: Option<Arc<str>>,
}

/// How a task stopped following its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// It read its result; `ours`: the task is still this worker's at this
    /// attempt (else a later attempt may have adopted the job).
    Read { ours: bool },
    /// It was cancelled: it no longer wants the job.
    Cancelled,
    /// The worker shut down: the next worker adopts the job.
    Interrupted,
}

/// What the last task to leave a job must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Afterwards {
    /// Others still follow the job, or it finishes on its own.
    Nothing,
    /// A task was cancelled while the job still ran it, and no task will
    /// come back for the job: stop it.
    Stop,
}

/// One job followed by the tasks it runs.
pub struct Watch {
    pub job_id: String,
    /// This worker submitted the job (an adopted one is never deleted).
    submitted: bool,
    seen: watch::Sender<Seen>,
    state: Mutex<Following>,
    /// Wakes the poller: the last task left.
    pub wake: Notify,
    /// Wakes the poller to read the logs: a runner said a run ended.
    pub logged: Notify,
}

struct Following {
    /// Tasks that have not left yet.
    left_to_leave: usize,
    cancelled: usize,
    interrupted: usize,
    not_ours: usize,
    /// The job slot of a submitted job, held until the job has ended.
    permit: Option<OwnedSemaphorePermit>,
}

impl Watch {
    /// The watch of a job this worker submits for `tasks` tasks.
    pub fn submitted(job_id: String, tasks: usize, permit: OwnedSemaphorePermit) -> Watch {
        Self::new(job_id, true, tasks, Some(permit))
    }

    /// The watch of an earlier attempt's job, followed by one task so far.
    pub fn adopted(job_id: String) -> Watch {
        Self::new(job_id, false, 1, None)
    }

    fn new(
        job_id: String,
        submitted: bool,
        tasks: usize,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Watch {
        Watch {
            job_id,
            submitted,
            seen: watch::channel(Seen::default()).0,
            state: Mutex::new(Following {
                left_to_leave: tasks,
                cancelled: 0,
                interrupted: 0,
                not_ours: 0,
                permit,
            }),
            wake: Notify::new(),
            logged: Notify::new(),
        }
    }

    /// Another task follows the job (an adopter). False if every task has
    /// left already: the watch is done, and a new one must be made.
    pub fn follow(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        if s.left_to_leave == 0 {
            return false;
        }
        s.left_to_leave += 1;
        true
    }

    /// The envelopes in the job's logs, read while it runs.
    pub fn publish_envelopes(&self, envelopes: HashMap<String, Envelope>) {
        self.seen.send_modify(|s| s.envelopes = Arc::new(envelopes));
    }

    /// The job's node; followers are woken only when it is new.
    pub fn publish_node(&self, node: &str) {
        self.seen.send_if_modified(|s| {
            if s.node.as_deref() == Some(node) {
                return false;
            }
            s.node = Some(Arc::from(node));
            true
        });
    }

    pub fn node(&self) -> Option<Arc<str>> {
        self.seen.borrow().node.clone()
    }

    pub fn publish_end(&self, end: JobEnd) {
        self.seen.send_modify(|s| s.end = Some(Arc::new(end)));
    }

    pub fn subscribe(&self) -> watch::Receiver<Seen> {
        self.seen.subscribe()
    }

    pub fn ended(&self) -> bool {
        self.seen.borrow().end.is_some()
    }

    /// Whether no task follows the job any more.
    pub fn is_abandoned(&self) -> bool {
        self.state.lock().unwrap().left_to_leave == 0
    }

    /// Whether the job may be deleted once it has ended: this worker
    /// submitted it, and every task read its result and is still ours (a
    /// later attempt that adopted it may still need it).
    pub fn deletable(&self, keep_jobs: bool) -> bool {
        let s = self.state.lock().unwrap();
        self.submitted
            && !keep_jobs
            && s.left_to_leave == 0
            && s.interrupted == 0
            && s.not_ours == 0
    }

    /// Frees the job slot (the job has ended, or is left to others).
    pub fn release(&self) {
        self.state.lock().unwrap().permit = None;
    }

    /// `how` one task left; what the job needs if it was the last one.
    pub fn leave(&self, how: Leave) -> Afterwards {
        let mut s = self.state.lock().unwrap();
        match how {
            Leave::Read { ours: true } => {}
            Leave::Read { ours: false } => s.not_ours += 1,
            Leave::Cancelled => s.cancelled += 1,
            Leave::Interrupted => s.interrupted += 1,
        }
        s.left_to_leave = s.left_to_leave.saturating_sub(1);
        let last = s.left_to_leave == 0;
        let stop = last && s.cancelled > 0 && s.interrupted == 0;
        drop(s);
        if last {
            self.wake.notify_one();
        }
        if stop && !self.ended() {
            // Nobody wants what it still computes, and no worker will
            // adopt it.
            Afterwards::Stop
        } else {
            Afterwards::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ray::JobStatus;

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap()
    }

    fn done(w: &Watch) {
        let job: JobDetails =
            serde_json::from_str(r#"{"submission_id": "j", "status": "SUCCEEDED"}"#).unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
        w.publish_end(JobEnd::Terminal {
            job: Box::new(job),
            logs: Some(Ok(Arc::from(""))),
        });
    }

    #[test]
    fn a_job_is_deletable_only_once_every_task_read_it_and_is_still_ours() {
        let w = Watch::submitted("j".into(), 3, permit());
        done(&w);
        assert_eq!(w.leave(Leave::Read { ours: true }), Afterwards::Nothing);
        assert!(!w.deletable(false), "a task still follows it");
        assert_eq!(
            w.leave(Leave::Cancelled),
            Afterwards::Nothing,
            "it has ended"
        );
        assert_eq!(w.leave(Leave::Read { ours: true }), Afterwards::Nothing);
        assert!(w.deletable(false));
        assert!(!w.deletable(true), "--ray-keep-jobs");
        assert!(!w.follow(), "a finished watch takes no new follower");

        let w = Watch::submitted("j".into(), 2, permit());
        w.leave(Leave::Read { ours: false });
        w.leave(Leave::Read { ours: true });
        assert!(!w.deletable(false), "a later attempt may have adopted it");

        let w = Watch::adopted("j".into());
        assert!(w.follow());
        w.leave(Leave::Read { ours: true });
        w.leave(Leave::Read { ours: true });
        assert!(!w.deletable(false), "adopted");
    }

    #[test]
    fn a_job_is_stopped_once_no_task_wants_what_it_still_runs() {
        let w = Watch::submitted("j".into(), 2, permit());
        assert_eq!(w.leave(Leave::Cancelled), Afterwards::Nothing);
        assert_eq!(w.leave(Leave::Cancelled), Afterwards::Stop);
        assert!(w.is_abandoned());

        // One task read its result early, the other was cancelled: the job
        // still runs the cancelled one.
        let w = Watch::submitted("j".into(), 2, permit());
        w.leave(Leave::Read { ours: true });
        assert_eq!(w.leave(Leave::Cancelled), Afterwards::Stop);
        // Every task read its result: the job finishes on its own.
        let w = Watch::submitted("j".into(), 2, permit());
        w.leave(Leave::Read { ours: true });
        assert_eq!(w.leave(Leave::Read { ours: true }), Afterwards::Nothing);

        // A task released at shutdown is adopted by the next worker.
        let w = Watch::submitted("j".into(), 2, permit());
        w.leave(Leave::Interrupted);
        assert_eq!(w.leave(Leave::Cancelled), Afterwards::Nothing);
    }

    #[test]
    fn the_job_slot_is_held_until_released() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let w = Watch::submitted("j".into(), 1, slots.clone().try_acquire_owned().unwrap());
        w.leave(Leave::Read { ours: true });
        assert_eq!(slots.available_permits(), 0);
        w.release();
        assert_eq!(slots.available_permits(), 1);
    }

    fn member(id: Uuid) -> Member {
        use crate::runtime::subtasks::ChildDefaults;
        let task = ClaimedTask {
            id,
            module_name: "hello".into(),
            module_version: "1".into(),
            module_sha256: "ab".repeat(32),
            queue: "default".into(),
            priority: 0,
            input: "{}".into(),
            attempt: 1,
            epoch: 1,
            max_attempts: 3,
            free_runs: 0,
            limits: Default::default(),
            enqueued_at: chrono::Utc::now(),
            lease_expires_at: chrono::Utc::now(),
            cancel_requested: false,
            depth: 0,
            children: 0,
        };
        let plan = SubtaskPlan {
            parent_id: id,
            depth: 0,
            max_children: 1,
            max_depth: 1,
            defaults: ChildDefaults {
                queue: "default".into(),
                priority: 0,
                max_attempts: 1,
                fuel: None,
                memory_bytes: None,
                timeout_ms: None,
            },
            known: Vec::new(),
            maxima: Default::default(),
        };
        Member {
            task,
            limits: Limits::default(),
            plan,
        }
    }

    #[test]
    fn a_batch_closes_in_claim_order_whatever_order_its_tasks_joined() {
        let now = chrono::Utc::now();
        let at = |id: Uuid, priority: i16, secs: i64| {
            let mut m = member(id);
            m.task.priority = priority;
            m.task.enqueued_at = now + chrono::Duration::seconds(secs);
            m
        };
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let batch = OpenBatch::new(at(ids[3], 0, 3), None);
        for m in [at(ids[1], 0, 1), at(ids[0], 5, 9), at(ids[2], 0, 2)] {
            assert!(batch.try_join(m, 8, 1 << 20).is_ok());
        }
        let order: Vec<Uuid> = batch.close().iter().map(|m| m.task.id).collect();
        assert_eq!(order, ids, "priority first, then the oldest");
    }

    #[test]
    fn a_batch_takes_tasks_until_full_or_closed() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let batch = OpenBatch::new(member(a), None);
        assert!(batch.try_join(member(b), 2, 1 << 20).is_ok());
        assert!(batch.try_join(member(c), 2, 1 << 20).is_err(), "full");
        assert!(batch.withdraw(a));
        assert_eq!(batch.len(), 1);
        let members = batch.close();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].task.id, b);
        assert!(!batch.withdraw(b), "closed: the job runs it");
        assert!(batch.try_join(member(c), 2, 1 << 20).is_err(), "closed");
        let small = OpenBatch::new(member(a), None);
        let size = member(b).size();
        assert!(small.try_join(member(b), 9, 2 * size).is_ok());
        assert!(
            small.try_join(member(c), 9, 2 * size).is_err(),
            "too many bytes"
        );
    }
}
