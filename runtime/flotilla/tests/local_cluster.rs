//! End-to-end tests of the runtime on in-process clusters: a head and workers on 127.0.0.1 in
//! the test process, driven through the public API.
//!
//! Every test waits on conditions (bounded polls, timeouts that fail the test), never on fixed
//! sleeps.

use std::{
    collections::HashMap,
    future::{Future, IntoFuture},
    time::{Duration, Instant},
};

use flotilla::Blob;
use flotilla::{
    admin,
    builtins::{
        add, byte_sum, fail_with, make_bytes, nested_sum, noop, panic_with, sleep_then, Counter,
    },
    driver::object_ref::ArgList,
    head::{self, HeadConfig},
    local::{LocalCluster, LocalOptions},
    process,
    worker::{self, WorkerConfig},
    ActorOptions, Error, ErrorKind, IntoArg, ObjectRef, Runtime, TaskOptions,
};
use flotilla_proto::v1 as pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// Bounds every wait of a test; well above what a healthy run needs.
const BOUND: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test (instead of hanging) if it takes longer than [`BOUND`].
async fn bounded<T>(what: &str, f: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {BOUND:?}"),
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`BOUND`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: condition not reached within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn local(workers: usize, slots: u32) -> (LocalCluster, Runtime) {
    let cluster = LocalCluster::start(LocalOptions {
        workers,
        slots,
        store_bytes: 1 << 30,
    })
    .await
    .expect("local cluster");
    let rt = Runtime::connect(&cluster.address, None)
        .await
        .expect("connect");
    (cluster, rt)
}

async fn finish(cluster: LocalCluster, rt: Runtime) {
    rt.shutdown().await;
    bounded("stopping the cluster", cluster.stop()).await;
}

fn task_error(e: Error) -> (ErrorKind, String, String) {
    match e {
        Error::Task {
            kind,
            task,
            message,
        } => (kind, task, message),
        other => panic!("expected a task error, got {other:?}"),
    }
}

/// A process started with a stop switch.
struct Node {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<flotilla::Result<()>>,
}

impl Node {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = bounded("stopping a node", self.handle).await;
    }
}

/// A head and workers on listeners bound here, for tests that need custom resources, tokens,
/// HTTP endpoints or to stop single workers.
struct Manual {
    address: String,
    http: Option<String>,
    token: Option<String>,
    head: Node,
    workers: HashMap<String, Node>,
}

impl Manual {
    async fn start(config: HeadConfig, with_http: bool) -> Manual {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let http_listener = if with_http {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let http = http_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap().to_string());
        let token = config.token.clone();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(head::serve(listener, http_listener, config, async move {
            let _ = rx.await;
        }));
        Manual {
            address,
            http,
            token,
            head: Node { stop, handle },
            workers: HashMap::new(),
        }
    }

    fn worker_config(&self, name: &str, slots: u32) -> WorkerConfig {
        let mut c = WorkerConfig::new(&self.address, name);
        c.slots = slots;
        c.token = self.token.clone();
        c
    }

    async fn add_worker(&mut self, config: WorkerConfig) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = config.name.clone();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker::run(config, listener, async move {
            let _ = rx.await;
        }));
        self.workers.insert(name, Node { stop, handle });
        let n = self.workers.len();
        admin::wait_for_workers(&self.address, self.token.as_deref(), n, BOUND)
            .await
            .expect("workers register");
    }

    async fn connect(&self) -> Runtime {
        Runtime::connect(&self.address, self.token.as_deref())
            .await
            .expect("connect")
    }

    async fn stop(self) {
        for (_, w) in self.workers {
            w.stop().await;
        }
        self.head.stop().await;
    }
}

// ------------------------------------------------------------------ calls and dependencies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dependencies_and_nested_tasks() {
    let (cluster, rt) = local(1, 2).await;

    // Square-like calls, many at once.
    let refs: Vec<ObjectRef<i64>> = (0..20).map(|i| add.remote(&rt, i, i * 10)).collect();
    let values = bounded("add", rt.get_all(&refs)).await.unwrap();
    assert_eq!(values, (0..20).map(|i| i * 11).collect::<Vec<_>>());
    bounded("noop", noop.remote(&rt)).await.unwrap();

    // A chain: each call takes the previous result as a dependency.
    let mut r = add.remote(&rt, 0, 1);
    for i in 2..=10 {
        r = add.remote(&rt, r, i);
    }
    assert_eq!(bounded("chain", r).await.unwrap(), 55);

    // A reference used twice, as both arguments.
    let x = add.remote(&rt, 20, 1);
    assert_eq!(
        bounded("diamond", add.remote(&rt, &x, &x)).await.unwrap(),
        42
    );
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_tasks_on_one_slot_do_not_deadlock() {
    // One worker with one slot: nested_sum holds it while its children need it, so its `get`
    // must lend the slot back.
    let (cluster, rt) = local(1, 1).await;
    let r = nested_sum.remote(&rt, 10);
    assert_eq!(bounded("nested_sum on one slot", r).await.unwrap(), 45);
    // Two at once, each waiting on children.
    let a = nested_sum.remote(&rt, 5);
    let b = nested_sum.remote(&rt, 6);
    assert_eq!(
        bounded("two nested sums", rt.get_all([&a, &b]))
            .await
            .unwrap(),
        vec![10, 15]
    );
    // The slot is whole again afterwards.
    assert_eq!(
        bounded("after nesting", add.remote(&rt, 1, 1))
            .await
            .unwrap(),
        2
    );
    let status = rt.status().await.unwrap();
    assert_eq!(status.workers.len(), 1);
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_keeps_order_and_wait_splits() {
    let (cluster, rt) = local(1, 2).await;

    // get_all answers in the order asked, not the order finished.
    let refs = vec![
        sleep_then.remote(&rt, 300, 1),
        sleep_then.remote(&rt, 0, 2),
        sleep_then.remote(&rt, 0, 3),
    ];
    assert_eq!(
        bounded("get_all", rt.get_all(&refs)).await.unwrap(),
        vec![1, 2, 3]
    );

    // wait: one slow, one fast.
    let slow = sleep_then.remote(&rt, 1500, 10);
    let fast = sleep_then.remote(&rt, 0, 20);
    let (ready, not_ready) = bounded(
        "wait n=1",
        rt.wait(
            vec![slow.clone(), fast.clone()],
            1,
            Some(Duration::from_secs(10)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![fast.id()]
    );
    assert_eq!(
        not_ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![slow.id()]
    );

    // Asking for both with a short timeout gives the same split, after the timeout.
    let started = Instant::now();
    let (ready, not_ready) = bounded(
        "wait timeout",
        rt.wait(
            vec![slow.clone(), fast.clone()],
            2,
            Some(Duration::from_millis(100)),
        ),
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!((ready.len(), not_ready.len()), (1, 1));
    assert_eq!(ready[0].id(), fast.id());

    // Without a timeout it waits for both; both in the order given.
    let (ready, not_ready) = bounded(
        "wait all",
        rt.wait(vec![slow.clone(), fast.clone()], 2, None),
    )
    .await
    .unwrap();
    assert!(not_ready.is_empty());
    assert_eq!(
        ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![slow.id(), fast.id()]
    );
    assert_eq!(rt.get_all(&ready).await.unwrap(), vec![10, 20]);

    // n = 0 returns at once with nothing ready.
    let pending = sleep_then.remote(&rt, 1000, 1);
    let (ready, not_ready) = bounded("wait n=0", rt.wait(vec![pending.clone()], 0, None))
        .await
        .unwrap();
    assert_eq!((ready.len(), not_ready.len()), (0, 1));
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_small_and_large() {
    let (cluster, rt) = local(1, 2).await;
    let small = rt.put(&vec![1u32, 2, 3]).await.unwrap();
    assert_eq!(
        bounded("small put", rt.get(&small)).await.unwrap(),
        vec![1, 2, 3]
    );

    // > 64 KiB: goes to a worker's store.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let large = rt.put(&Blob::from(big.clone())).await.unwrap();
    assert_eq!(
        bounded("large put", rt.get(&large)).await.unwrap().to_vec(),
        big
    );
    // Puts reach the head on the session's stream, status on its own call: wait for them.
    eventually("the head tracks put objects", || async {
        (rt.status().await.unwrap().objects >= 2).then_some(())
    })
    .await;

    // Put objects are arguments like any other.
    let expected: u64 = big.iter().map(|b| u64::from(*b)).sum();
    assert_eq!(
        bounded("byte_sum of a put", byte_sum.remote(&rt, &large))
            .await
            .unwrap(),
        (300_000, expected)
    );

    // On the worker's host the value went through one shared-memory segment, mapped by the
    // worker's store; freeing the object removes it.
    if let Some(dir) = flotilla::objects::shm::segment_dir() {
        let segment = dir.join(format!("{}-{}", std::process::id(), large.id()));
        assert!(
            segment.is_file(),
            "{} should hold the put",
            segment.display()
        );
        drop(large);
        eventually("the segment is removed with the object", || async {
            (!segment.exists()).then_some(())
        })
        .await;
    }
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_travel_peer_to_peer() {
    let mut c = Manual::start(HeadConfig::default(), false).await;
    for name in ["w0", "w1"] {
        let mut config = c.worker_config(name, 2);
        config.custom.insert(name.to_string(), 1);
        c.add_worker(config).await;
    }
    let rt = c.connect().await;
    let on = |w: &str| TaskOptions::default().resource(w, 1).max_retries(0);

    // Produced on w0, consumed on w1.
    let data = make_bytes.remote_with(&rt, &on("w0"), 500_000u64, 3u8);
    let sum = byte_sum.remote_with(&rt, &on("w1"), &data);
    assert_eq!(
        bounded("byte_sum on the other worker", sum).await.unwrap(),
        (500_000, 1_500_000)
    );

    // And the other way round, twice from one source (the second may use w1's copy).
    let data2 = make_bytes.remote_with(&rt, &on("w1"), 200_000u64, 1u8);
    let s1 = byte_sum.remote_with(&rt, &on("w0"), &data2);
    let s2 = byte_sum.remote_with(&rt, &on("w1"), &data2);
    assert_eq!(
        bounded("both ways", rt.get_all([&s1, &s2])).await.unwrap(),
        vec![(200_000, 200_000); 2]
    );

    // The driver fetches from the producer too.
    let value = bounded("driver fetch", rt.get(&data)).await.unwrap();
    assert_eq!(value.len(), 500_000);
    assert!(value.iter().all(|b| *b == 3));

    // Both workers ended up holding the first object (w1 kept the copy it fetched).
    let status = eventually("w1 reports its copy", || async {
        let s = rt.status().await.ok()?;
        s.workers.iter().all(|w| w.objects >= 1).then_some(s)
    })
    .await;
    assert_eq!(status.workers.len(), 2);
    rt.shutdown().await;
    c.stop().await;
}

// ------------------------------------------------------------------ errors are values

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_values() {
    let (cluster, rt) = local(1, 2).await;

    let (kind, task, message) = task_error(
        bounded(
            "panic",
            panic_with.remote(&rt, "boom: it broke".to_string()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(kind, ErrorKind::Panic);
    assert!(task.contains("panic_with"), "task name: {task:?}");
    assert!(message.contains("boom: it broke"), "message: {message:?}");

    let (kind, task, message) = task_error(
        bounded("fail", fail_with.remote(&rt, "no good".to_string()))
            .await
            .unwrap_err(),
    );
    assert_eq!(kind, ErrorKind::Application);
    assert!(task.contains("fail_with"), "task name: {task:?}");
    assert!(message.contains("no good"), "message: {message:?}");

    // A failed argument fails its dependents, naming the cause.
    let failed = fail_with.remote(&rt, "upstream broke".to_string());
    let dependent = sleep_then.remote(&rt, &failed, 1);
    let e = bounded("dependency failed", dependent).await.unwrap_err();
    assert!(e.to_string().contains("upstream broke"), "{e}");

    // An unknown function: a clear error naming it, never a hang.
    let r: ObjectRef<u64> = rt.call_function("nope::missing", "fn() -> u64", ArgList::new(), None);
    let (kind, _, message) = task_error(bounded("unknown function", rt.get(&r)).await.unwrap_err());
    assert_eq!(kind, ErrorKind::UnknownFunction);
    assert!(message.contains("nope::missing"), "message: {message:?}");

    // A real function with another signature.
    let mut args = ArgList::new();
    IntoArg::<i64>::push_to(1i64, &mut args);
    let r: ObjectRef<i64> = rt.call_function(add::NAME, "fn(a: i64) -> i64", args, None);
    let (kind, _, message) =
        task_error(bounded("signature mismatch", rt.get(&r)).await.unwrap_err());
    assert_eq!(kind, ErrorKind::TypeMismatch);
    assert!(message.contains("add"), "message: {message:?}");

    // An argument of the wrong type (no signature to catch it early): the worker's decoding does.
    let mut args = ArgList::new();
    IntoArg::<String>::push_to("not a number at all".to_string(), &mut args);
    IntoArg::<String>::push_to("nor this".to_string(), &mut args);
    let r: ObjectRef<i64> = rt.call_function(add::NAME, "", args, None);
    let (kind, _, message) = task_error(
        bounded("argument type mismatch", rt.get(&r))
            .await
            .unwrap_err(),
    );
    assert_eq!(kind, ErrorKind::TypeMismatch, "{message}");

    // The worker is fine afterwards.
    assert_eq!(
        bounded("after errors", add.remote(&rt, 2, 3))
            .await
            .unwrap(),
        5
    );
    let status = rt.status().await.unwrap();
    assert!(status.tasks_failed >= 5, "{status:?}");
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_queued_task() {
    let (cluster, rt) = local(1, 1).await;
    let blocker = sleep_then.remote(&rt, 800, 7);
    let queued = add.remote(&rt, 1, 2);
    rt.cancel(&queued);
    let (kind, _, _) = task_error(bounded("cancelled", rt.get(&queued)).await.unwrap_err());
    assert_eq!(kind, ErrorKind::Cancelled);
    // The running one is untouched; later work still runs.
    assert_eq!(bounded("blocker", blocker).await.unwrap(), 7);
    assert_eq!(
        bounded("after cancel", add.remote(&rt, 2, 2))
            .await
            .unwrap(),
        4
    );
    finish(cluster, rt).await;
}

// ------------------------------------------------------------------ actors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_calls_run_in_order_and_named_lookup() {
    let (cluster, rt) = local(1, 2).await;
    let counter = bounded("create", Counter::remote(&rt, 0)).await.unwrap();
    // Submitted all at once, run one at a time in call order.
    let refs: Vec<_> = (0..10).map(|_| counter.increment()).collect();
    assert_eq!(
        bounded("increments", rt.get_all(&refs)).await.unwrap(),
        (1..=10).collect::<Vec<i64>>()
    );
    assert_eq!(bounded("value", counter.value()).await.unwrap(), 10);
    // A slow call is not overtaken by a fast one after it.
    let slow = counter.slow_add(5, 200);
    let after = counter.value();
    assert_eq!(
        bounded("slow then fast", rt.get_all([&slow, &after]))
            .await
            .unwrap(),
        vec![15, 15]
    );

    // A named actor, found from another session.
    let named = bounded(
        "create named",
        Counter::remote_with(&rt, &ActorOptions::default().name("shared-counter"), 100),
    )
    .await
    .unwrap();
    assert_eq!(
        bounded("named increment", named.increment()).await.unwrap(),
        101
    );
    let rt2 = Runtime::connect(&cluster.address, None).await.unwrap();
    assert_ne!(rt.session(), rt2.session());
    let found = bounded("lookup", Counter::lookup(&rt2, "shared-counter"))
        .await
        .unwrap();
    assert_eq!(
        bounded("found increment", found.increment()).await.unwrap(),
        102
    );
    assert_eq!(
        bounded("creator sees it", named.value()).await.unwrap(),
        102
    );

    // A missing name is an error, not a hang.
    let e = bounded("missing lookup", Counter::lookup(&rt2, "no-such-actor"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no-such-actor"), "{e}");
    assert_eq!(e.kind(), Some(ErrorKind::ActorDied));

    rt2.shutdown().await;
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_all_handles_kills_an_actor() {
    let (cluster, rt) = local(1, 2).await;
    let counter = bounded("create", Counter::remote(&rt, 0)).await.unwrap();
    let copy = counter.clone();
    assert_eq!(bounded("increment", copy.increment()).await.unwrap(), 1);
    assert_eq!(rt.status().await.unwrap().actors_alive, 1);
    drop(copy);
    // One handle left: still alive and working.
    assert_eq!(bounded("increment", counter.increment()).await.unwrap(), 2);
    assert_eq!(rt.status().await.unwrap().actors_alive, 1);
    drop(counter);
    eventually("the actor dies with its last handle", || async {
        (rt.status().await.ok()?.actors_alive == 0).then_some(())
    })
    .await;
    finish(cluster, rt).await;
}

// ------------------------------------------------------------------ objects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_spills_to_disk() {
    let spill = tempfile::tempdir().unwrap();
    let mut c = Manual::start(HeadConfig::default(), false).await;
    let mut config = c.worker_config("spilly", 2);
    config.store_bytes = 300_000;
    config.spill_dir = spill.path().to_path_buf();
    c.add_worker(config).await;
    let rt = c.connect().await;

    let refs: Vec<_> = (0..6u8)
        .map(|i| make_bytes.remote(&rt, 200_000u64, i + 1))
        .collect();
    let values = bounded("spilled values", rt.get_all(&refs)).await.unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.len(), 200_000);
        assert!(
            v.iter().all(|b| *b == i as u8 + 1),
            "value {i} came back wrong"
        );
    }
    // Spilled ones also work as arguments.
    let sums = bounded(
        "sums of spilled",
        rt.get_all(
            refs.iter()
                .map(|r| byte_sum.remote(&rt, r))
                .collect::<Vec<_>>(),
        ),
    )
    .await
    .unwrap();
    for (i, s) in sums.iter().enumerate() {
        assert_eq!(*s, (200_000, 200_000 * (i as u64 + 1)));
    }
    // A value being written to disk stays in memory (and readable) until its file is complete,
    // so the cap holds once the spills in flight are done.
    let w = eventually(
        "spilled bytes reported, memory back under the cap",
        || async {
            let s = rt.status().await.ok()?;
            s.workers
                .into_iter()
                .find(|w| w.spilled_bytes > 0 && w.memory_bytes <= 300_000)
        },
    )
    .await;
    assert!(
        w.memory_bytes <= 300_000,
        "memory stays under the cap: {w:?}"
    );
    assert!(w.spilled_bytes >= 200_000, "{w:?}");
    assert!(
        std::fs::read_dir(spill.path()).unwrap().count() > 0,
        "spill files exist"
    );
    rt.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_results_are_freed() {
    let (cluster, rt) = local(1, 2).await;
    {
        let small: Vec<_> = (0..10).map(|i| add.remote(&rt, i, 1)).collect();
        let large = make_bytes.remote(&rt, 100_000u64, 9u8);
        let put = rt.put(&Blob::from(vec![5u8; 100_000])).await.unwrap();
        let chained = add.remote(&rt, small[0].clone(), 1);
        assert_eq!(
            bounded("small", rt.get_all(&small)).await.unwrap().len(),
            10
        );
        assert_eq!(
            bounded("large", byte_sum.remote(&rt, &large))
                .await
                .unwrap(),
            (100_000, 900_000)
        );
        assert_eq!(
            bounded("put", byte_sum.remote(&rt, &put)).await.unwrap(),
            (100_000, 500_000)
        );
        assert_eq!(bounded("chained", chained).await.unwrap(), 2);
        assert!(rt.status().await.unwrap().objects >= 12);
    }
    let status = eventually("objects freed at the head and in the store", || async {
        let s = rt.status().await.ok()?;
        (s.objects == 0
            && s.workers
                .iter()
                .all(|w| w.objects == 0 && w.memory_bytes == 0))
        .then_some(s)
    })
    .await;
    assert_eq!(status.tasks_running, 0);
    finish(cluster, rt).await;
}

// ------------------------------------------------------------------ drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_an_idle_local_worker() {
    let (cluster, rt) = local(1, 1).await;
    let reply = bounded(
        "drain",
        admin::drain(&cluster.address, None, "local-0", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(reply.outcome(), pb::DrainOutcome::Drained, "{reply:?}");
    let status = rt.status().await.unwrap();
    assert_eq!(status.workers[0].state(), pb::WorkerState::Drained);
    // Unknown names are answered, not waited on.
    let reply = bounded(
        "drain unknown",
        admin::drain(&cluster.address, None, "nobody", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(reply.outcome(), pb::DrainOutcome::NotRegistered);
    assert!(reply.message.contains("nobody"), "{reply:?}");

    // A drained worker needed again is taken back, over the same admin API the operator uses:
    // work queued meanwhile runs on it.
    let queued = add.remote(&rt, 2, 3);
    let reply = bounded("undrain", admin::undrain(&cluster.address, None, "local-0"))
        .await
        .unwrap();
    assert_eq!(reply.previous(), pb::WorkerState::Drained, "{reply:?}");
    assert_eq!(bounded("after undrain", queued).await.unwrap(), 5);
    let status = rt.status().await.unwrap();
    assert_ne!(status.workers[0].state(), pb::WorkerState::Drained);
    let unknown = bounded(
        "undrain unknown",
        admin::undrain(&cluster.address, None, "nobody"),
    )
    .await
    .unwrap_err();
    assert!(unknown.to_string().contains("nobody"), "{unknown}");
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_copies_objects_the_worker_alone_holds() {
    let mut c = Manual::start(HeadConfig::default(), false).await;
    for name in ["w0", "w1"] {
        let mut config = c.worker_config(name, 2);
        config.custom.insert(name.to_string(), 1);
        c.add_worker(config).await;
    }
    let rt = c.connect().await;
    let on_w0 = TaskOptions::default().resource("w0", 1).max_retries(0);
    let data = make_bytes.remote_with(&rt, &on_w0, 300_000u64, 2u8);
    let other = make_bytes.remote_with(&rt, &on_w0, 100_000u64, 4u8);
    bounded(
        "produced",
        rt.wait(vec![data.clone(), other.clone()], 2, None),
    )
    .await
    .unwrap();

    let reply = bounded(
        "drain w0",
        admin::drain(&c.address, None, "w0", Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(reply.outcome(), pb::DrainOutcome::Drained, "{reply:?}");
    let status = rt.status().await.unwrap();
    let w1 = status.workers.iter().find(|w| w.name == "w1").unwrap();
    let w0 = status.workers.iter().find(|w| w.name == "w0").unwrap();
    assert_eq!(w0.state(), pb::WorkerState::Drained);
    assert_ne!(w1.state(), pb::WorkerState::Drained);

    // The drained worker goes away (as a scaled-down pod would); the objects live on in w1.
    c.workers.remove("w0").unwrap().stop().await;
    eventually("w0 leaves", || async {
        (rt.status().await.ok()?.workers.len() == 1).then_some(())
    })
    .await;
    let value = bounded("get after drain", rt.get(&data)).await.unwrap();
    assert_eq!(value.len(), 300_000);
    assert!(value.iter().all(|b| *b == 2));
    assert_eq!(
        bounded("as an argument", byte_sum.remote(&rt, &other))
            .await
            .unwrap(),
        (100_000, 400_000)
    );
    rt.shutdown().await;
    c.stop().await;
}

// ------------------------------------------------------------------ HTTP endpoints

async fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of a series line `name{labels} value`.
/// The value of the series `key` (`name{label="value",...}`) in a Prometheus text exposition,
/// whatever the order of its labels.
fn series(body: &str, key: &str) -> Option<u64> {
    let wanted = parse_series(key)?;
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (parse_series(series)? == wanted).then(|| value.trim().parse().ok())?
    })
}

/// A series' name and its labels, sorted.
fn parse_series(s: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some((name, rest)) = s.split_once('{') else {
        return Some((s.to_string(), Vec::new()));
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        };
        labels.push((label.to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels.sort();
    Some((name.to_string(), labels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_metrics_and_health() {
    let config = HeadConfig {
        cluster: "demo".into(),
        namespace: "lab".into(),
        ..HeadConfig::default()
    };
    let mut c = Manual::start(config, true).await;
    let config = c.worker_config("m0", 2);
    c.add_worker(config).await;
    let rt = c.connect().await;
    assert_eq!(bounded("a task", add.remote(&rt, 1, 2)).await.unwrap(), 3);
    let _ = bounded("a failure", fail_with.remote(&rt, "x".to_string())).await;
    let named = TaskOptions::default().name("nightly-sum");
    assert_eq!(
        bounded("a named task", add.remote_with(&rt, &named, 2, 2))
            .await
            .unwrap(),
        4
    );

    let http = c.http.clone().unwrap();
    let (code, body) = bounded("/metrics", http_get(&http, "/metrics")).await;
    assert_eq!(code, 200, "{body}");
    let l = r#"cluster="demo",namespace="lab""#;
    for key in [
        format!("flotilla_tasks_pending{{{l}}}"),
        format!("flotilla_tasks_waiting{{{l}}}"),
        format!("flotilla_tasks_running{{{l}}}"),
        format!("flotilla_tasks_finished_total{{{l}}}"),
        format!("flotilla_tasks_failed_total{{{l}}}"),
        format!("flotilla_tasks_retried_total{{{l}}}"),
        format!(r#"flotilla_slots{{{l},state="busy"}}"#),
        format!(r#"flotilla_slots{{{l},state="free"}}"#),
        format!(r#"flotilla_workers{{{l},state="idle"}}"#),
        format!(r#"flotilla_workers{{{l},state="busy"}}"#),
        format!(r#"flotilla_workers{{{l},state="draining"}}"#),
        format!(r#"flotilla_actors{{{l},state="alive"}}"#),
        format!(r#"flotilla_actors{{{l},state="restarting"}}"#),
        format!(r#"flotilla_actors{{{l},state="dead"}}"#),
        format!(r#"flotilla_object_store_bytes{{{l},location="memory"}}"#),
        format!(r#"flotilla_object_store_bytes{{{l},location="spilled"}}"#),
        format!("flotilla_desired_workers{{{l}}}"),
        // The autoscaler's signal: `group=""` is always shown, even at zero.
        r#"flotilla_demand_slots{cluster="demo",group="",namespace="lab"}"#.to_owned(),
        format!(r#"flotilla_task_runs_total{{{l},task="nightly-sum",outcome="finished"}}"#),
    ] {
        assert!(
            series(&body, &key).is_some(),
            "missing series {key} in:\n{body}"
        );
    }
    assert_eq!(
        series(
            &body,
            &format!(r#"flotilla_task_runs_total{{{l},task="nightly-sum",outcome="finished"}}"#)
        ),
        Some(1),
        "a call's name labels its runs"
    );
    assert!(
        body.contains("# TYPE flotilla_tasks_finished_total counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE flotilla_tasks_pending gauge"),
        "{body}"
    );
    assert!(series(&body, &format!("flotilla_tasks_finished_total{{{l}}}")).unwrap() >= 1);
    assert!(series(&body, &format!("flotilla_tasks_failed_total{{{l}}}")).unwrap() >= 1);
    let busy = series(&body, &format!(r#"flotilla_slots{{{l},state="busy"}}"#)).unwrap();
    let free = series(&body, &format!(r#"flotilla_slots{{{l},state="free"}}"#)).unwrap();
    assert_eq!(busy + free, 2, "{body}");
    assert_eq!(
        series(
            &body,
            &format!(r#"flotilla_group_workers{{{l},group="default"}}"#)
        ),
        Some(1),
        "{body}"
    );

    let (code, _) = bounded("/healthz", http_get(&http, "/healthz")).await;
    assert_eq!(code, 200);
    let (code, _) = bounded("/readyz", http_get(&http, "/readyz")).await;
    assert_eq!(code, 200);
    rt.shutdown().await;
    c.stop().await;
}

// ------------------------------------------------------------------ safety

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_when_set() {
    let config = HeadConfig {
        token: Some("s3cret-token".into()),
        ..HeadConfig::default()
    };
    let mut c = Manual::start(config, false).await;
    let worker = c.worker_config("t0", 1);
    c.add_worker(worker).await;

    let e = bounded("wrong token", Runtime::connect(&c.address, Some("wrong")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    let e = bounded("no token", Runtime::connect(&c.address, None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    let e = bounded("status without token", admin::status(&c.address, None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");

    // A worker with the wrong token is refused for good, not retried forever.
    let mut bad = WorkerConfig::new(&c.address, "t-bad");
    bad.token = Some("wrong".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = bounded(
        "worker with a wrong token",
        worker::run(bad, listener, std::future::pending()),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");

    let rt = bounded(
        "right token",
        Runtime::connect(&c.address, Some("s3cret-token")),
    )
    .await
    .unwrap();
    assert_eq!(
        bounded("a task", add.remote(&rt, 20, 22)).await.unwrap(),
        42
    );
    let big = rt.put(&Blob::from(vec![1u8; 100_000])).await.unwrap();
    assert_eq!(
        bounded("stored object with a token", byte_sum.remote(&rt, &big))
            .await
            .unwrap(),
        (100_000, 100_000)
    );
    // Actor calls go straight to the worker with the token too; without it the worker's
    // gRPC service refuses the stream before any call is read.
    let counter = bounded("create", Counter::remote(&rt, 0)).await.unwrap();
    let mut value = 0;
    while rt.direct_calls() == 0 {
        value = bounded("increment", counter.increment()).await.unwrap();
        assert!(value < 1000, "no call went straight to the worker");
    }
    let worker_address = rt.status().await.unwrap().workers[0].address.clone();
    for token in [None, Some("wrong")] {
        let channel = flotilla::net::connect(&worker_address).await.unwrap();
        let mut client = pb::worker_client::WorkerClient::with_interceptor(
            channel,
            flotilla_proto::auth::AddAuth::new(token),
        );
        let call = pb::DirectCalls {
            calls: vec![pb::DirectCall {
                spec: Some(pb::TaskSpec {
                    task: 1,
                    kind: Some(pb::task_spec::Kind::ActorCall(pb::ActorCall {
                        actor: counter.actor().id().0,
                        method: "increment".into(),
                    })),
                    ..pb::TaskSpec::default()
                }),
                incarnation: 0,
                lease: 0,
            }],
        };
        let e = bounded(
            "a direct call without the token",
            client.call(futures::stream::iter([call])),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
    // The refused calls did not run.
    assert_eq!(bounded("value", counter.value()).await.unwrap(), value);
    rt.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_no_listening_beyond_loopback() {
    if flotilla_proto::contract::token_from_env().is_some() {
        eprintln!("FLOTILLA_TOKEN is set in the environment; skipping");
        return;
    }
    // 192.0.2.1 (TEST-NET-1) is on no interface here: a bind would fail with "cannot listen",
    // so the token error shows the check happens before any socket is opened.
    for bind in ["192.0.2.1:0", "0.0.0.0:0"] {
        let e = bounded(
            "head refuses",
            process::run_head_from_env(Some(bind.into()), Some("127.0.0.1:0".into()), None),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert!(
            e.to_string().contains("token") && !e.to_string().contains("cannot listen"),
            "{e}"
        );

        let config = WorkerConfig::new("127.0.0.1:1", "unsafe-worker");
        let e = bounded(
            "worker refuses",
            process::run_worker_from_env(config, Some(bind.into())),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert!(
            e.to_string().contains("token") && !e.to_string().contains("cannot listen"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_does_not_stop_the_head() {
    let (cluster, rt) = local(1, 2).await;
    // Random bytes, an HTTP/2 preface followed by junk, and a plain HTTP/1 request.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        payloads.push((0..4096).map(|_| rand::random::<u8>()).collect());
    }
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend((0..1024).map(|_| rand::random::<u8>()));
    payloads.push(preface);
    payloads.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    for p in payloads {
        let mut s = TcpStream::connect(&cluster.address).await.unwrap();
        let _ = s.write_all(&p).await;
        let mut sink = Vec::new();
        // The head closes (or answers) the connection; either way it must not wedge.
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
    }
    assert_eq!(
        bounded("a call after garbage", add.remote(&rt, 4, 5))
            .await
            .unwrap(),
        9
    );
    let rt2 = bounded(
        "a new session after garbage",
        Runtime::connect(&cluster.address, None),
    )
    .await
    .unwrap();
    assert_eq!(
        bounded("a call from it", add.remote(&rt2, 1, 1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(rt.status().await.unwrap().workers.len(), 1);
    rt2.shutdown().await;
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_worker_name_is_refused() {
    let mut c = Manual::start(HeadConfig::default(), false).await;
    let first = c.worker_config("twin", 2);
    c.add_worker(first).await;
    let rt = c.connect().await;
    assert_eq!(
        bounded("first works", add.remote(&rt, 1, 2)).await.unwrap(),
        3
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = c.worker_config("twin", 2);
    let e = bounded(
        "second is refused",
        worker::run(second, listener, std::future::pending()),
    )
    .await
    .unwrap_err();
    match &e {
        Error::Config(msg) => assert!(
            msg.contains("twin") && msg.contains("already registered"),
            "{msg}"
        ),
        other => panic!("expected a config error, got {other:?}"),
    }

    // The first keeps working and is still the only one.
    assert_eq!(
        bounded("first still works", add.remote(&rt, 3, 4))
            .await
            .unwrap(),
        7
    );
    let status = rt.status().await.unwrap();
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.workers[0].name, "twin");
    rt.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_http_serves_metrics_and_guards_its_objects() {
    let config = HeadConfig {
        token: Some("worker-http-secret".into()),
        ..HeadConfig::default()
    };
    let mut c = Manual::start(config, false).await;
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_address = http.local_addr().unwrap().to_string();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker::run(c.worker_config("h0", 2), http, async move {
        let _ = rx.await;
    }));
    c.workers.insert("h0".into(), Node { stop, handle });
    admin::wait_for_workers(&c.address, c.token.as_deref(), 1, BOUND)
        .await
        .unwrap();
    let rt = c.connect().await;
    let status = rt.status().await.unwrap();
    assert_eq!(status.workers[0].http_address, http_address);

    // A stored result reaches the driver over the worker's HTTP port, with the token.
    let big = make_bytes.remote(&rt, 200_000, 3);
    let blob: Blob = bounded("get over HTTP", rt.get(&big)).await.unwrap();
    assert_eq!((blob.len(), blob[0]), (200_000, 3));
    assert_eq!(
        bounded("an argument", byte_sum.remote(&rt, &big))
            .await
            .unwrap(),
        (200_000, 600_000)
    );

    let (code, body) = bounded("worker /metrics", http_get(&http_address, "/metrics")).await;
    assert_eq!(code, 200, "{body}");
    let l = r#"worker="h0",group="default""#;
    assert!(
        series(&body, &format!("flotilla_worker_tasks_total{{{l}}}")).is_some_and(|n| n >= 2),
        "{body}"
    );
    assert_eq!(
        series(&body, &format!("flotilla_worker_slots{{{l}}}")),
        Some(2),
        "{body}"
    );
    assert!(
        series(
            &body,
            &format!(r#"flotilla_worker_object_store_bytes{{{l},location="memory"}}"#)
        )
        .is_some_and(|b| b >= 200_000),
        "{body}"
    );
    let (code, _) = bounded("/readyz", http_get(&http_address, "/readyz")).await;
    assert_eq!(code, 200);

    // Without the token the object routes refuse, and nothing outside the segment directory can
    // be adopted even with it.
    let (code, _) = bounded(
        "object without token",
        http_get(&http_address, &format!("/objects/{}", big.id().0)),
    )
    .await;
    assert_eq!(code, 401);
    let mut stream = TcpStream::connect(&http_address).await.unwrap();
    let request = "POST /objects/99/adopt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer worker-http-secret\r\n\
         Content-Length: 11\r\nConnection: close\r\n\r\n/etc/passwd";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    bounded("adopt answer", stream.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("not a flotilla shared-memory segment"),
        "{response}"
    );

    rt.shutdown().await;
    c.stop().await;
}

/// Connections that send nothing are closed by the head's gRPC port and a worker's HTTP port
/// once the first-byte timeout passes, and those whose headers never end once the header-read
/// timeout passes, while real clients keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    let mut c = Manual::start(HeadConfig::default(), true).await;
    let config = c.worker_config("quiet-0", 1);
    c.add_worker(config).await;
    let rt = c.connect().await;
    let worker_http = rt.status().await.unwrap().workers[0].http_address.clone();
    let mut silent = Vec::new();
    for address in [&c.address, &worker_http, c.http.as_ref().unwrap()] {
        for _ in 0..20 {
            silent.push(TcpStream::connect(address).await.unwrap());
        }
    }
    // Headers that trickle in and never end are cut off on the HTTP ports too.
    for address in [&worker_http, c.http.as_ref().unwrap()] {
        let mut trickle = TcpStream::connect(address).await.unwrap();
        trickle
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        silent.push(trickle);
    }
    // Served while the silent ones wait.
    assert_eq!(bounded("a task", add.remote(&rt, 2, 3)).await.unwrap(), 5);
    let limit = flotilla::net::guard::FIRST_BYTE_TIMEOUT.max(flotilla::net::HEADER_READ_TIMEOUT)
        + Duration::from_secs(10);
    for mut s in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(limit, s.read(&mut buf))
            .await
            .expect("a silent connection is closed by the server");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not answered: {read:?}"
        );
    }
    rt.shutdown().await;
    c.stop().await;
}

// ------------------------------------------------------------------ jobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_tasks_are_counted_and_cancelled_with_it() {
    let cluster = LocalCluster::start(LocalOptions {
        workers: 1,
        slots: 2,
        store_bytes: 1 << 30,
    })
    .await
    .expect("local cluster");
    let rt = Runtime::connect_for_job(&cluster.address, None, "ns/job-a")
        .await
        .expect("connect");
    let other = Runtime::connect(&cluster.address, None).await.unwrap();
    assert_eq!(bounded("add", add.remote(&rt, 1, 2)).await.unwrap(), 3);
    let long: Vec<_> = (0..3).map(|_| sleep_then.remote(&rt, 3_000, 1)).collect();
    let theirs = sleep_then.remote(&other, 300, 9);
    let job = |reply: &pb::StatusReply| reply.jobs.iter().find(|j| j.job == "ns/job-a").cloned();
    let running = eventually("the job's tasks show", || async {
        let s = admin::status(&cluster.address, None).await.ok()?;
        job(&s).filter(|j| j.tasks_submitted == 4 && j.tasks_live == 3)
    })
    .await;
    assert_eq!((running.tasks_finished, running.drivers), (1, 1));

    let reply = admin::cancel_job(&cluster.address, None, "ns/job-a")
        .await
        .unwrap();
    assert_eq!((reply.sessions, reply.tasks_cancelled), (1, 3));
    for r in &long {
        let (kind, _, message) = task_error(bounded("cancelled", rt.get(r)).await.unwrap_err());
        assert_eq!(kind, ErrorKind::Cancelled, "{message}");
    }
    let (kind, _, message) =
        task_error(bounded("refused", add.remote(&rt, 1, 1)).await.unwrap_err());
    assert_eq!(kind, ErrorKind::Cancelled);
    assert!(message.contains("job ns/job-a was cancelled"), "{message}");
    // Nothing of the job runs on the worker any more; other drivers' work goes on.
    let gone = eventually("the job's tasks stop", || async {
        let s = admin::status(&cluster.address, None).await.ok()?;
        job(&s).filter(|j| j.tasks_live == 0)
    })
    .await;
    assert_eq!((gone.tasks_finished, gone.tasks_failed), (1, 3));
    assert_eq!(bounded("theirs", theirs).await.unwrap(), 9);
    other.shutdown().await;
    finish(cluster, rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_calls_go_straight_to_the_worker_and_the_head_counts_them() {
    let (cluster, rt) = local(1, 2).await;
    let counter = bounded("create", Counter::remote(&rt, 0)).await.unwrap();
    // Awaited one at a time: the first goes through the head while the driver learns where the
    // actor lives, the later ones straight to its worker.
    for i in 1..=50 {
        assert_eq!(bounded("increment", counter.increment()).await.unwrap(), i);
    }
    assert!(rt.direct_calls() > 0, "no call went directly");
    // Results dropped before they arrive, calls mixed with ones taking references (which go
    // through the head behind the direct ones): all in call order.
    for _ in 0..20 {
        drop(counter.increment());
    }
    let five = rt.put(&5i64).await.unwrap();
    // (The reference is moved in: the held call holds the last one until it is sent.)
    let by_ref = counter.slow_add(five, 0u64);
    let after = counter.increment();
    assert_eq!(bounded("by reference", by_ref).await.unwrap(), 75);
    assert_eq!(bounded("after it", after).await.unwrap(), 76);
    // A direct call's result can be an argument of a task through the head.
    let value = counter.value();
    let doubled = add.remote(&rt, &value, &value);
    assert_eq!(
        bounded("its result as an argument", doubled).await.unwrap(),
        152
    );
    // The head counted every call, direct or not: the creation, 50 + 20 increments, three
    // more calls and the task.
    eventually("the head counts every call", || async {
        let status = rt.status().await.ok()?;
        (status.tasks_finished >= 75).then_some(())
    })
    .await;
    finish(cluster, rt).await;
}
