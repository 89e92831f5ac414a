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
