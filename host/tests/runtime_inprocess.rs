//! The runtime as a library: several runs in one process, so that a bad run is
//! seen not to hurt the next one, and caches behave.

use std::path::PathBuf;
use std::sync::Arc;
use wasmq::runtime::{
    CacheSource, CancelToken, Limits, RunReport, RunRequest, Runtime, RuntimeConfig, TaskInfo,
};

fn example(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-examples.sh first", p.display()))
}

fn runtime() -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    )
}

fn request<'a>(
    input: &'a str,
    limits: &'a Limits,
    task: TaskInfo,
    cancel: CancelToken,
) -> RunRequest<'a> {
    RunRequest {
        input,
        limits,
        task,
        cancel,
        dirs: &[],
        progress: None,
        subtasks: None,
        http: None,
        config: None,
    }
}

async fn run(rt: &Runtime, name: &str, input: &str, limits: &Limits) -> RunReport {
    let (m, cache) = rt.load_bytes(example(name)).await.unwrap();
    rt.run(
        &m,
        cache,
        request(input, limits, TaskInfo::local(), CancelToken::new()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_then_a_normal_run_in_the_same_process() {
    let rt = runtime();
    let small = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let r = run(&rt, "hog", "{}", &small).await;
    assert_eq!(r.outcome.kind(), "out-of-memory", "{:?}", r.outcome);
    let r = run(&rt, "hello", r#"{"name":"after"}"#, &Limits::default()).await;
    assert!(r.outcome.is_success(), "{:?}", r.outcome);
    assert!(r.output.unwrap().contains("Hello, after!"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_sees_its_attempt_through_context() {
    let rt = runtime();
    let (m, cache) = rt.load_bytes(example("flaky")).await.unwrap();
    let limits = Limits::default();
    let task = |attempt| TaskInfo {
        task_id: "t-1".into(),
        attempt,
        max_attempts: 5,
        queue: "q".into(),
    };
    let input = r#"{"succeed_on_attempt":3}"#;
    let r = rt
        .run(
            &m,
            cache,
            request(input, &limits, task(2), CancelToken::new()),
        )
        .await;
    assert_eq!(r.outcome.kind(), "task-error", "{:?}", r.outcome);
    let r = rt
        .run(
            &m,
            cache,
            request(input, &limits, task(3), CancelToken::new()),
        )
        .await;
    assert!(r.outcome.is_success(), "{:?}", r.outcome);
    assert!(r.output.unwrap().contains('3'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_spinning_guest() {
    let rt = runtime();
    let (m, cache) = rt.load_bytes(example("spin")).await.unwrap();
    let limits = Limits {
        fuel: None,
        ..Limits::default()
    };
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c2.cancel();
    });
    let r = rt
        .run(&m, cache, request("{}", &limits, TaskInfo::local(), cancel))
        .await;
    assert_eq!(r.outcome.kind(), "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_guest_blocked_in_a_host_call() {
    let rt = runtime();
    let (m, cache) = rt.load_bytes(example("sleepy")).await.unwrap();
    let limits = Limits::default();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c2.cancel();
    });
    let r = rt
        .run(
            &m,
            cache,
            request(r#"{"ms":20000}"#, &limits, TaskInfo::local(), cancel),
        )
        .await;
    assert_eq!(r.outcome.kind(), "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_runs_share_one_compiled_module() {
    let rt = runtime();
    let mut handles = Vec::new();
    for i in 0..64 {
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            let input = format!(r#"{{"name":"n{i}"}}"#);
            run(&rt, "hello", &input, &Limits::default()).await
        }));
    }
    let mut compiled = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        assert!(r.outcome.is_success());
        assert!(r.output.unwrap().contains(&format!("n{i}")));
        compiled += (r.cache == CacheSource::Compiled) as usize;
    }
    assert_eq!(compiled, 1, "the module must be compiled exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_pool_wait_for_a_slot_instead_of_failing() {
    let rt = Arc::new(
        Runtime::new(RuntimeConfig {
            allocator: wasmq::runtime::Allocator::Pooling,
            pool_instances: 1,
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    let (m, cache) = rt.load_bytes(example("sleepy")).await.unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (rt, m) = (rt.clone(), m.clone());
            tokio::spawn(async move {
                let limits = Limits::default();
                rt.run(
                    &m,
                    cache,
                    request(
                        r#"{"ms":50}"#,
                        &limits,
                        TaskInfo::local(),
                        CancelToken::new(),
                    ),
                )
                .await
            })
        })
        .collect();
    for run in runs {
        let r = run.await.unwrap();
        assert!(r.outcome.is_success(), "{:?}", r.outcome);
    }
}

// ---- subtasks: suspend and replay, without a database -----------------------

mod subtasks {
    use super::*;
    use wasmq::runtime::Outcome;
    use wasmq::runtime::subtasks::{
        ChildDefaults, ChildEnd, KnownChild, SubtaskPlan, child_id, spawn_digest,
    };

    fn plan(parent: uuid::Uuid, known: Vec<KnownChild>) -> SubtaskPlan {
        SubtaskPlan {
            parent_id: parent,
            depth: 0,
            max_children: 100,
            max_depth: 8,
            defaults: ChildDefaults {
                queue: "q".into(),
                priority: 0,
                max_attempts: 3,
                fuel: None,
                memory_bytes: None,
                timeout_ms: None,
            },
            known,
            maxima: Default::default(),
        }
    }

    async fn run_fanout(rt: &Runtime, input: &str, plan: SubtaskPlan) -> RunReport {
        let (m, cache) = rt.load_bytes(example("fanout")).await.unwrap();
        let limits = Limits::default();
        let mut req = request(input, &limits, TaskInfo::local(), CancelToken::new());
        req.subtasks = Some(plan);
        rt.run(&m, cache, req).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_suspends_and_the_replay_returns_the_recorded_results() {
        let rt = runtime();
        let parent = uuid::Uuid::now_v7();
        let first = run_fanout(&rt, r#"{"count": 3}"#, plan(parent, vec![])).await;
        assert!(
            matches!(first.outcome, Outcome::Waiting { .. }),
            "{:?}",
            first.outcome
        );
        assert_eq!(first.spawns.len(), 3);
        let s = first.suspension.as_ref().unwrap();
        assert_eq!(
            (s.awaited.as_slice(), s.allowed_unfinished),
            (&[0, 1, 2][..], 0)
        );
        for (i, spawn) in first.spawns.iter().enumerate() {
            assert_eq!(spawn.seq, i as u32);
            assert_eq!(spawn.id, child_id(parent, i as u32));
            assert_eq!(spawn.module, "add");
            assert_eq!(spawn.digest, spawn_digest("add", &spawn.input));
            assert!(spawn.awaited);
            assert_eq!(spawn.queue, "q", "inherited");
        }

        // Replayed with two children done and one not: the same spawns,
        // nothing new, and another wait.
        let known = |ends: [Option<u64>; 3]| -> Vec<KnownChild> {
            first
                .spawns
                .iter()
                .zip(ends)
                .map(|(s, end)| KnownChild {
                    seq: s.seq,
                    id: s.id,
                    digest: s.digest.clone(),
                    end: end.map(|sum| ChildEnd::Succeeded {
                        result: format!(r#"{{"sum":{sum}}}"#),
                    }),
                })
                .collect()
        };
        let second = run_fanout(
            &rt,
            r#"{"count": 3}"#,
            plan(parent, known([Some(0), Some(2), None])),
        )
        .await;
        assert!(matches!(second.outcome, Outcome::Waiting { .. }));
        assert!(second.spawns.is_empty(), "every spawn was known");

        let third = run_fanout(
            &rt,
            r#"{"count": 3}"#,
            plan(parent, known([Some(0), Some(2), Some(4)])),
        )
        .await;
        assert!(third.outcome.is_success(), "{:?}", third.outcome);
        assert_eq!(third.output.as_deref(), Some(r#"{"children":3,"sum":6}"#));

        // A failed child fails the map with its outcome in the message.
        let mut failed = known([Some(0), Some(2), Some(4)]);
        failed[1].end = Some(ChildEnd::Failed {
            task_state: "failed".into(),
            error_kind: Some("out-of-fuel".into()),
            message: Some("the task used all of its fuel".into()),
        });
        let fourth = run_fanout(&rt, r#"{"count": 3}"#, plan(parent, failed)).await;
        let message = fourth.outcome.message().unwrap_or_default().to_string();
        assert!(message.contains("failed (out-of-fuel)"), "{message}");

        // A different input at a known spawn: non-deterministic.
        let mut changed = known([None, None, None]);
        changed[1].digest = spawn_digest("add", r#"{"a":9,"b":9}"#);
        let fifth = run_fanout(&rt, r#"{"count": 3}"#, plan(parent, changed)).await;
        let message = fifth.outcome.message().unwrap_or_default().to_string();
        assert!(
            message.starts_with("non-deterministic: spawn #1"),
            "{message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawns_past_the_bounds_are_refused_with_a_task_error() {
        let rt = runtime();
        let mut p = plan(uuid::Uuid::now_v7(), vec![]);
        p.max_children = 2;
        let r = run_fanout(&rt, r#"{"count": 3}"#, p).await;
        let message = r.outcome.message().unwrap_or_default().to_string();
        assert!(message.contains("at most 2 children"), "{message}");
        let mut p = plan(uuid::Uuid::now_v7(), vec![]);
        p.depth = 8;
        let r = run_fanout(&rt, r#"{"count": 1}"#, p).await;
        let message = r.outcome.message().unwrap_or_default().to_string();
        assert!(message.contains("nest at most 8 deep"), "{message}");
        // Without a plan (as under `wasmq run`), spawning says why not.
        let (m, cache) = rt.load_bytes(example("fanout")).await.unwrap();
        let limits = Limits::default();
        let r = rt
            .run(
                &m,
                cache,
                request(
                    r#"{"count": 1}"#,
                    &limits,
                    TaskInfo::local(),
                    CancelToken::new(),
                ),
            )
            .await;
        let message = r.outcome.message().unwrap_or_default().to_string();
        assert!(message.contains("subtasks are not available"), "{message}");
    }
}

/// Redaction can lengthen a guest's output (`[redacted:NAME]` for a
/// 4-byte value): the output cap holds for what would be stored, after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_cap_holds_after_redaction() {
    use wasmq::runtime::RunConfig;
    use wasmq::secrets::SecretKey;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, [9u8; 32]).unwrap();
    let key = SecretKey::from_file(&key_file).unwrap();
    let value = key.open("t", &key.seal("t", "abcd").unwrap()).unwrap();
    let config = Arc::new(RunConfig::new(Vec::new(), vec![("t".into(), value)]));

    let rt = runtime();
    let (m, cache) = rt.load_bytes(example("hello")).await.unwrap();
    let limits = Limits {
        max_output_bytes: 1_000,
        ..Limits::default()
    };
    let go = |name: String| {
        let (rt, m, limits, config) = (rt.clone(), m.clone(), limits.clone(), config.clone());
        async move {
            let input = serde_json::json!({ "name": name }).to_string();
            let mut req = request(&input, &limits, TaskInfo::local(), CancelToken::new());
            req.config = Some(config);
            rt.run(&m, cache, req).await
        }
    };
    // 200 values: 830 bytes as the guest wrote them, 2,430 redacted.
    let r = go("abcd".repeat(200)).await;
    assert_eq!(r.outcome.kind(), "invalid-output", "{:?}", r.outcome);
    assert!(
        r.outcome
            .message()
            .unwrap()
            .contains("over the cap of 1000 bytes"),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.output, None);
    // Under the cap once redacted: the output is stored redacted.
    let r = go("abcd".repeat(20)).await;
    assert!(r.outcome.is_success(), "{:?}", r.outcome);
    let out = r.output.unwrap();
    assert!(
        !out.contains("abcd") && out.contains("[redacted:t]"),
        "{out}"
    );
}

/// Every run starts from the module's own memory image, whatever an earlier
/// run in the same pooled slot wrote: its static data, its zeroed data, and
/// more separate dirty pages than the pooling allocator's page scan reports
/// at once (it resets those with memset and hands the rest back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_never_sees_what_an_earlier_run_left_in_memory() {
    use wasmq::runtime::{Allocator, DEFAULT_POOL_KEEP_RESIDENT};
    let configs = [
        (Allocator::Pooling, 0),
        (Allocator::Pooling, 64 << 10),
        (Allocator::Pooling, DEFAULT_POOL_KEEP_RESIDENT),
        (Allocator::OnDemand, DEFAULT_POOL_KEEP_RESIDENT),
    ];
    let chaos = example("chaos");
    for (allocator, keep_resident) in configs {
        let rt = Runtime::new(RuntimeConfig {
            allocator,
            // One slot: every run reuses the memory of the one before.
            pool_instances: 1,
            pool_keep_resident: keep_resident,
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let (m, cache) = rt.load_bytes(chaos.clone()).await.unwrap();
        let limits = Limits::default();
        for i in 0..20 {
            let req = request(
                r#"{"leftovers":true}"#,
                &limits,
                TaskInfo::local(),
                CancelToken::new(),
            );
            let r = rt.run(&m, cache, req).await;
            assert_eq!(
                r.output.as_deref(),
                Some(r#"{"leftovers":0}"#),
                "run {i}, {allocator:?}, keep_resident {keep_resident}: {:?}",
                r.outcome
            );
        }
    }
}
