//! Fault tolerance and hardening against real processes: the stock `flotilla` binary runs as
//! head and workers, the test drives it as a client, kills processes with SIGKILL and checks
//! what the cluster does about it.
//!
//! Every test waits on conditions (bounded polling of the head's status), never on sleeps, and
//! kills every process it started, also when it fails (the guards below do it on drop).
//! `FLOTILLA_TEST_LOGS=1` shows the processes' output.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flotilla::Blob;
use flotilla::{
    admin,
    builtins::{
        add, byte_sum, make_bytes, nested_sum, sleep_then, work_until_cancelled, Counter,
        CounterHandle,
    },
    local::processes::ProcessCluster,
    ActorOptions, ErrorKind, ObjectRef, Runtime, TaskOptions,
};
use flotilla_proto::v1::{self as pb, head_client::HeadClient};

const EXE: &str = env!("CARGO_BIN_EXE_flotilla");
/// Tells `driver_that_goes_away` to act as the driver process it kills.
const CHILD_DRIVER_ENV: &str = "FLOTILLA_TEST_CHILD_DRIVER";
/// Tells `driver_killed_while_holding_a_lease` to act as the driver process it kills.
const CHILD_LEASE_ENV: &str = "FLOTILLA_TEST_CHILD_LEASE";

// ---------------------------------------------------------------------------------- helpers

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Proc {
    what: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            what: what.to_string(),
            child: Some(child),
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .unwrap_or_else(|| panic!("{} was already killed", self.what))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn output() -> Stdio {
    if std::env::var_os("FLOTILLA_TEST_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn local_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A `flotilla` command with none of the cluster variables of the test's environment.
fn flotilla() -> Command {
    let mut cmd = Command::new(EXE);
    for var in [
        "FLOTILLA_HEAD",
        "FLOTILLA_TOKEN",
        "FLOTILLA_BIND",
        "FLOTILLA_ROLE",
        "FLOTILLA_WORKER_NAME",
        "FLOTILLA_SLOTS",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn start_head(address: &str, token: &str) -> Proc {
    Proc::spawn(
        &format!("head at {address}"),
        flotilla()
            .args(["head", "--bind", address, "--http-bind", "127.0.0.1:0"])
            .env("FLOTILLA_TOKEN", token)
            .stdout(output())
            .stderr(output()),
    )
}

fn start_worker(head: &str, token: &str, name: &str, slots: u32, resources: &[String]) -> Proc {
    let mut cmd = flotilla();
    cmd.args([
        "worker",
        "--head",
        head,
        "--name",
        name,
        "--slots",
        &slots.to_string(),
    ])
    // Port 0: the worker tells the head the ports it got, and no other test can take them
    // between a pick and the bind.
    .args(["--bind", "127.0.0.1:0"])
    .env("FLOTILLA_TOKEN", token)
    .stdout(output())
    .stderr(output());
    for r in resources {
        cmd.args(["--resource", r]);
    }
    Proc::spawn(&format!("worker {name}"), &mut cmd)
}

/// A head and workers `{prefix}-{i}` with `slots` slots and the custom resource `w{i}`.
struct TestCluster {
    address: String,
    token: String,
    workers: Vec<Proc>,
    head: Proc,
}

impl TestCluster {
    async fn start(prefix: &str, workers: usize, slots: u32) -> TestCluster {
        let address = local_address();
        let token = new_token();
        let head = start_head(&address, &token);
        let mut c = TestCluster {
            address,
            token,
            workers: Vec::new(),
            head,
        };
        for i in 0..workers {
            let w = c.worker(&format!("{prefix}-{i}"), slots, &[format!("w{i}=1000000")]);
            c.workers.push(w);
        }
        let names: Vec<String> = (0..workers).map(|i| format!("{prefix}-{i}")).collect();
        c.wait_registered(&names).await;
        c
    }

    fn worker(&self, name: &str, slots: u32, resources: &[String]) -> Proc {
        start_worker(&self.address, &self.token, name, slots, resources)
    }

    async fn status(&self) -> flotilla::Result<pb::StatusReply> {
        admin::status(&self.address, Some(&self.token)).await
    }

    async fn connect(&self) -> Runtime {
        Runtime::connect(&self.address, Some(&self.token))
            .await
            .expect("a driver connects")
    }

    /// Polls the head's status until `check` accepts it.
    async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&pb::StatusReply) -> bool,
    ) -> pb::StatusReply {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status().await {
                Ok(s) if check(&s) => return s,
                Ok(s) => format!("{s:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last status: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until exactly the workers `names` are registered.
    async fn wait_registered(&self, names: &[String]) -> pb::StatusReply {
        self.wait_status(
            &format!("workers {names:?}"),
            Duration::from_secs(30),
            |s| {
                let mut have: Vec<&str> = s.workers.iter().map(|w| w.name.as_str()).collect();
                have.sort();
                let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
                want.sort();
                have == want
            },
        )
        .await
    }
}

/// Runs a future with a deadline; a hang is a test failure, not a stuck test run.
async fn bounded<T>(what: &str, timeout: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {timeout:?}"))
}

/// Runs a task and checks its answer: the cluster still takes work.
async fn still_works(rt: &Runtime) {
    let r = add.remote(rt, 2, 3);
    let sum = bounded("add", Duration::from_secs(30), rt.get(&r)).await;
    assert_eq!(sum.expect("a task runs"), 5);
}

// ------------------------------------------------------------------------------------ tests

/// A worker killed with SIGKILL while it runs tasks: every task still gives its answer (retried
/// elsewhere), and a stored object it held is rebuilt from lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_task() {
    let mut c = TestCluster::start("kill", 2, 2).await;
    let rt = c.connect().await;

    // 1 MB on worker kill-1 (the only one with w1), still referenced when it dies.
    let on_w1 = TaskOptions::default().resource("w1", 1);
    let big = make_bytes.remote_with(&rt, &on_w1, 1_000_000, 3);
    let (ready, _) = bounded(
        "make_bytes",
        Duration::from_secs(30),
        rt.wait(vec![big.clone()], 1, None),
    )
    .await
    .unwrap();
    assert_eq!(ready.len(), 1);

    let refs: Vec<_> = (0..20).map(|i| sleep_then.remote(&rt, 300, i)).collect();
    c.wait_status("both workers running tasks", Duration::from_secs(30), |s| {
        s.tasks_running > 0 && s.workers.len() == 2 && s.workers.iter().all(|w| w.busy_slots > 0)
    })
    .await;
    c.workers[1].kill();

    let values = bounded("the 20 tasks", Duration::from_secs(30), rt.get_all(&refs))
        .await
        .expect("every task gives its answer");
    assert_eq!(values, (0..20).collect::<Vec<u64>>());
    let s = c.wait_registered(&["kill-0".to_string()]).await;
    // At least one task running there, and the object's rebuild, count as retries.
    assert!(
        s.tasks_retried >= 2,
        "tasks on the killed worker were retried: {s:?}"
    );

    // Only a worker with w1 can rebuild the object: start one.
    let replacement = c.worker("kill-2", 2, &["w1=1000000".to_string()]);
    c.workers.push(replacement);
    let sum = bounded(
        "byte_sum of the rebuilt object",
        Duration::from_secs(30),
        rt.get(&byte_sum.remote(&rt, &big)),
    )
    .await
    .expect("the lost object is rebuilt from lineage");
    assert_eq!(sum, (1_000_000, 3_000_000));
    rt.shutdown().await;
}

/// An actor with max_restarts(1) comes back (fresh state) after its worker is killed; after a
/// second kill it is dead and calls say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_restarts_then_dies() {
    let mut c = TestCluster::start("actor", 1, 2).await;
    let rt = c.connect().await;
    // Only actor-0 exists: the actor starts there.
    let counter = bounded(
        "Counter creation",
        Duration::from_secs(30),
        Counter::remote_with(&rt, &ActorOptions::default().max_restarts(1), 0),
    )
    .await
    .expect("the actor starts");
    for want in 1..=3 {
        assert_eq!(rt.get(&counter.increment()).await.unwrap(), want);
    }

    let second = c.worker("actor-1", 2, &[]);
    c.workers.push(second);
    c.wait_registered(&["actor-0".to_string(), "actor-1".to_string()])
        .await;
    c.workers[0].kill();
    c.wait_registered(&["actor-1".to_string()]).await;
    let after_restart = bounded(
        "a call after the restart",
        Duration::from_secs(30),
        rt.get(&counter.increment()),
    )
    .await
    .expect("the restarted actor answers");
    assert_eq!(
        after_restart, 1,
        "a restarted actor starts from its constructor"
    );
    assert_eq!(rt.get(&counter.value()).await.unwrap(), 1);

    c.workers[1].kill();
    c.wait_status("actor-1 gone", Duration::from_secs(30), |s| {
        s.workers.is_empty()
    })
    .await;
    let err = bounded(
        "a call to the dead actor",
        Duration::from_secs(30),
        rt.get(&counter.increment()),
    )
    .await
    .expect_err("the actor is out of restarts");
    assert_eq!(err.kind(), Some(ErrorKind::ActorDied), "{err}");
    assert!(
        err.to_string().contains("max_restarts"),
        "the error says why: {err}"
    );
    rt.shutdown().await;
}

/// Calls `counter.increment()` one at a time until one more than `since` went straight to the
/// actor's worker (a driver learns where an actor lives while its first calls go through the
/// head); returns the last value.
async fn until_direct(rt: &Runtime, counter: &CounterHandle, since: u64) -> i64 {
    loop {
        let value = bounded(
            "an increment",
            Duration::from_secs(30),
            rt.get(&counter.increment()),
        )
        .await
        .expect("the actor answers");
        if rt.direct_calls() > since {
            return value;
        }
        assert!(value < 1000, "no call went straight to the actor's worker");
    }
}

/// Worker `{prefix}-0` with a Counter (max_restarts 1) the driver calls directly, then a second
/// worker `{prefix}-1` for it to restart on; also returns the counter's value.
async fn direct_counter_and_a_spare(prefix: &str) -> (TestCluster, Runtime, CounterHandle, i64) {
    let mut c = TestCluster::start(prefix, 1, 2).await;
    let rt = c.connect().await;
    let counter = bounded(
        "Counter creation",
        Duration::from_secs(30),
        Counter::remote_with(&rt, &ActorOptions::default().max_restarts(1), 0),
    )
    .await
    .expect("the actor starts");
    let value = until_direct(&rt, &counter, 0).await;
    let spare = c.worker(&format!("{prefix}-1"), 2, &[]);
    c.workers.push(spare);
    c.wait_registered(&[format!("{prefix}-0"), format!("{prefix}-1")])
        .await;
    (c, rt, counter, value)
}

/// A worker killed while a direct call runs on its actor: the call fails with `ActorDied` (it
/// may have run, so it is not run again), the head counts it, and the next calls reach the
/// restarted actor, through the head and then directly at its new place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_during_a_direct_call() {
    let (mut c, rt, counter, reached) = direct_counter_and_a_spare("dkill").await;
    let sent = rt.direct_calls();
    let slow = counter.slow_add(1, 20_000u64);
    assert_eq!(rt.direct_calls(), sent + 1, "the slow call went directly");
    c.workers[0].kill();
    let err = bounded(
        "the interrupted call",
        Duration::from_secs(30),
        rt.get(&slow),
    )
    .await
    .expect_err("its worker died under it");
    assert_eq!(err.kind(), Some(ErrorKind::ActorDied), "{err}");
    assert!(err.to_string().contains("went away"), "{err}");
    c.wait_registered(&["dkill-1".to_string()]).await;

    // The restarted actor starts from its constructor; later calls go to it directly again.
    let first = bounded(
        "after the restart",
        Duration::from_secs(30),
        rt.get(&counter.increment()),
    )
    .await
    .expect("the restarted actor answers");
    assert_eq!(first, 1);
    let last = until_direct(&rt, &counter, rt.direct_calls()).await;
    // The head counted the calls, the failed direct one among them.
    c.wait_status("the head counted the calls", Duration::from_secs(30), |s| {
        s.tasks_failed >= 1 && s.tasks_finished >= reached as u64 + last as u64
    })
    .await;
    rt.shutdown().await;
}

/// An actor that restarts elsewhere (its worker drained) while the caller holds its old address:
/// the old worker answers the caller's direct calls as not hosted without running them, and they
/// run on the restarted actor through the head, in call order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_restarted_while_the_caller_holds_its_address() {
    let (c, rt, counter, _) = direct_counter_and_a_spare("dmove").await;
    let reply = bounded(
        "the drain",
        Duration::from_secs(30),
        admin::drain(
            &c.address,
            Some(&c.token),
            "dmove-0",
            Duration::from_secs(20),
        ),
    )
    .await
    .expect("the head answers the drain");
    assert_eq!(reply.outcome(), pb::DrainOutcome::Drained, "{reply:?}");
    c.wait_status("the actor alive on dmove-1", Duration::from_secs(30), |s| {
        s.actors_alive == 1
            && s.workers
                .iter()
                .any(|w| w.name == "dmove-1" && w.state() == pb::WorkerState::Busy)
    })
    .await;

    // The caller still holds dmove-0's address: these go there first, come back not run, and
    // run on the restarted actor (fresh state) in the order they were made.
    let sent = rt.direct_calls();
    let calls: Vec<_> = (0..5).map(|_| counter.increment()).collect();
    assert!(
        rt.direct_calls() > sent,
        "the calls went to the old address"
    );
    let values = bounded("the calls", Duration::from_secs(30), rt.get_all(&calls))
        .await
        .expect("the restarted actor answers");
    assert_eq!(values, vec![1, 2, 3, 4, 5]);
    // And the driver finds the actor's new place.
    until_direct(&rt, &counter, rt.direct_calls()).await;
    rt.shutdown().await;
}

/// The driver process of `driver_that_goes_away`: submits long tasks, puts objects, says so
/// and waits to be killed.
async fn child_driver(spec: &str) {
    let (address, token) = spec.split_once(' ').expect("address and token");
    let rt = Runtime::connect(address, Some(token))
        .await
        .expect("the child driver connects");
    let tasks: Vec<_> = (0..6).map(|i| sleep_then.remote(&rt, 60_000, i)).collect();
    let big = rt
        .put(&Blob::from(vec![1u8; 1_000_000]))
        .await
        .expect("put 1 MB");
    let small = rt.put(&42u64).await.expect("put a number");
    println!("CHILD READY session {}", rt.session());
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop((tasks, big, small));
}

/// Starts this test binary again as a driver process of `test` (told by `env` to act as it,
/// with the cluster's address and token) and waits until it prints `ready`.
async fn child_driver_process(test: &str, env: &str, c: &TestCluster, ready: &str) -> Proc {
    let mut driver = Proc::spawn(
        "the child driver",
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(env, format!("{} {}", c.address, c.token))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(output()),
    );
    let stdout = driver.child().stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = ready.to_string();
    let seen = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) =
            lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(&ready) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(seen, "the child driver of {test} did not get ready");
    driver
}

/// A driver killed with SIGKILL: the head cancels its tasks and frees its objects long before
/// the tasks would have finished, and the worker running them exits to stop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_that_goes_away() {
    if let Ok(spec) = std::env::var(CHILD_DRIVER_ENV) {
        child_driver(&spec).await;
        return;
    }
    let mut c = TestCluster::start("orphan", 1, 2).await;
    let mut driver =
        child_driver_process("driver_that_goes_away", CHILD_DRIVER_ENV, &c, "CHILD READY").await;

    c.wait_status(
        "the child's tasks running and objects stored",
        Duration::from_secs(30),
        |s| s.tasks_running > 0 && s.objects >= 2 && s.workers.iter().any(|w| w.objects > 0),
    )
    .await;
    let killed = Instant::now();
    driver.kill();
    // The tasks would run for 3 × 60 s on 2 slots; 15 s is "well before".
    let s = c
        .wait_status(
            "the child's tasks cancelled and objects freed",
            Duration::from_secs(15),
            |s| {
                s.tasks_pending == 0
                    && s.tasks_waiting == 0
                    && s.tasks_running == 0
                    && s.objects == 0
                    && s.workers
                        .iter()
                        .all(|w| w.objects == 0 && w.busy_slots == 0)
            },
        )
        .await;
    assert!(killed.elapsed() < Duration::from_secs(15));
    assert_eq!(
        s.tasks_finished, 0,
        "no task of the dead driver ran to the end: {s:?}"
    );

    // Its tasks slept on worker threads, which nothing stops but the worker's exit: the worker
    // exits with EXIT_CANCEL_FORCED. Start it again, as the kubelet would.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = c.workers[0].child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.code(),
        Some(i32::from(flotilla_proto::contract::EXIT_CANCEL_FORCED))
    );
    let again = c.worker("orphan-0", 2, &[]);
    c.workers[0] = again;
    c.wait_registered(&["orphan-0".to_string()]).await;

    // The cluster still works: the new worker takes new work.
    let rt = c.connect().await;
    still_works(&rt).await;
    rt.shutdown().await;
}

/// Writes `bytes` to `address` and reads until the server closes the connection; fails when it
/// does not within a few seconds.
fn raw_exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return reply,
            Err(e) => panic!(
                "the head neither answered nor closed the connection: {e} (read so far: {:?})",
                String::from_utf8_lossy(&reply)
            ),
        }
    }
}

/// Adds chosen metadata to every request.
#[derive(Clone)]
struct Metadata(Vec<(&'static str, String)>);

impl tonic::service::Interceptor for Metadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in &self.0 {
            request.metadata_mut().insert(*k, v.parse().unwrap());
        }
        Ok(request)
    }
}

/// Garbage, HTTP/1.1, a wrong token and another protocol version on the head's port each get a
/// clear refusal, and the head keeps serving a normal driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_head_port() {
    let c = TestCluster::start("bad", 1, 1).await;
    let address = c.address.clone();

    // Not HTTP/2: the head drops the connection (and says so in an HTTP/2 GOAWAY, if anything).
    let garbage = tokio::task::spawn_blocking({
        let a = address.clone();
        move || {
            raw_exchange(
                &a,
                b"\x00\xff\x13\x37 this is not a gRPC request \xde\xad\xbe\xef\r\n\r\n",
            )
        }
    });
    let http1 = tokio::task::spawn_blocking({
        let a = address.clone();
        move || {
            raw_exchange(
                &a,
                format!("GET /metrics HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
        }
    });
    let (garbage, http1) = (garbage.await.unwrap(), http1.await.unwrap());
    for (what, reply) in [("garbage", &garbage), ("HTTP/1.1", &http1)] {
        // All that comes back is the server's HTTP/2 preamble (a SETTINGS frame: type 4 in the
        // frame header) or a GOAWAY (type 7), then the connection closes: no hang, nothing served.
        assert!(
            reply.is_empty() || (reply.len() >= 9 && matches!(reply[3], 4 | 7)),
            "{what}: unexpected reply {:?}",
            String::from_utf8_lossy(reply)
        );
    }

    // A wrong token.
    let err = admin::status(&address, Some("not-the-token"))
        .await
        .expect_err("a wrong token is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("token") && msg.contains("FLOTILLA_TOKEN"),
        "{msg}"
    );
    let err = Runtime::connect(&address, Some("not-the-token"))
        .await
        .expect_err("a driver with a wrong token is refused");
    assert!(err.to_string().contains("token"), "{err}");
    let err = admin::status(&address, None)
        .await
        .expect_err("no token is refused");
    assert!(err.to_string().contains("token"), "{err}");

    // Another protocol version, straight through tonic.
    let channel = flotilla::net::connect(&address).await.unwrap();
    let mut client = HeadClient::with_interceptor(
        channel.clone(),
        Metadata(vec![
            ("flotilla-protocol", "99".into()),
            ("authorization", format!("Bearer {}", c.token)),
        ]),
    );
    let status = client
        .status(pb::StatusRequest {})
        .await
        .expect_err("protocol 99 is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("protocol version mismatch"),
        "{}",
        status.message()
    );
    // No version header at all.
    let mut client = HeadClient::with_interceptor(
        channel.clone(),
        Metadata(vec![("authorization", format!("Bearer {}", c.token))]),
    );
    let status = client
        .status(pb::StatusRequest {})
        .await
        .expect_err("no protocol header is refused");
    assert!(
        status.message().contains("protocol version mismatch"),
        "{}",
        status.message()
    );
    // The right header but another version in the driver's hello.
    let mut client = HeadClient::with_interceptor(
        channel,
        Metadata(vec![
            (
                "flotilla-protocol",
                flotilla_proto::PROTOCOL_VERSION.to_string(),
            ),
            ("authorization", format!("Bearer {}", c.token)),
        ]),
    );
    let hello = pb::DriverBatch {
        ops: vec![pb::DriverOp {
            op: Some(pb::driver_op::Op::Hello(pb::DriverHello {
                protocol_version: 99,
                ..Default::default()
            })),
            parent: 0,
            lost_on: String::new(),
        }],
    };
    let refused = bounded("a hello of protocol 99", Duration::from_secs(10), async {
        match client.drive(futures::stream::iter(vec![hello])).await {
            Err(status) => status,
            Ok(response) => response
                .into_inner()
                .message()
                .await
                .expect_err("the session is refused"),
        }
    })
    .await;
    assert!(
        refused.message().contains("protocol version mismatch"),
        "{refused:?}"
    );

    // The head still serves a normal driver.
    let rt = c.connect().await;
    assert_eq!(
        bounded(
            "add",
            Duration::from_secs(30),
            rt.get(&add.remote(&rt, 20, 22))
        )
        .await
        .unwrap(),
        42
    );
    let put = rt.put(&"still here".to_string()).await.unwrap();
    assert_eq!(rt.get(&put).await.unwrap(), "still here");
    let s = c.status().await.unwrap();
    assert_eq!(s.workers.len(), 1);
    rt.shutdown().await;
}

/// A worker whose head dies keeps retrying and registers with a new head on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_to_a_new_head() {
    let mut c = TestCluster::start("loyal", 1, 1).await;
    c.head.kill();
    // The old head is gone: nothing answers on its address.
    assert!(c.status().await.is_err(), "the killed head still answers");
    c.head = start_head(&c.address, &c.token);
    let s = c.wait_registered(&["loyal-0".to_string()]).await;
    assert_eq!(s.tasks_finished, 0, "this is a new head");
    let rt = c.connect().await;
    assert_eq!(
        bounded(
            "add on the new head",
            Duration::from_secs(30),
            rt.get(&add.remote(&rt, 1, 2))
        )
        .await
        .unwrap(),
        3
    );
    rt.shutdown().await;
}

/// The head killed (SIGKILL) mid-job and a new one started on the same address: the driver
/// resumes its session, submits again what had not finished, and every answer is right; values it
/// put, small and large, and a finished stored result still resolve and still serve as arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_restart_loses_no_work() {
    let mut c = TestCluster::start("phoenix", 2, 2).await;
    let rt = c.connect().await;

    let small = rt.put(&41i64).await.expect("a small put");
    let large = rt
        .put(&Blob::from(vec![5u8; 300_000]))
        .await
        .expect("a large put");
    let made = make_bytes.remote(&rt, 200_000, 7);
    let three = add.remote(&rt, 1, 2);
    let counter = bounded(
        "Counter creation",
        Duration::from_secs(30),
        Counter::remote(&rt, 0),
    )
    .await
    .expect("the actor starts");
    assert_eq!(rt.get(&counter.increment()).await.unwrap(), 1);
    assert_eq!(
        bounded("first results", Duration::from_secs(30), rt.get(&three))
            .await
            .unwrap(),
        3
    );
    bounded(
        "make_bytes",
        Duration::from_secs(30),
        rt.wait(vec![made.clone()], 1, None),
    )
    .await
    .unwrap();

    // Long tasks, more than the 4 slots run at once; one takes a result as its argument.
    let slow: Vec<_> = (0..10).map(|i| sleep_then.remote(&rt, 1_500, i)).collect();
    let after = add.remote(&rt, &three, 10);
    c.wait_status("tasks running", Duration::from_secs(30), |s| {
        s.tasks_running >= 4
    })
    .await;
    c.head.kill();
    c.head = start_head(&c.address, &c.token);
    c.wait_registered(&["phoenix-0".to_string(), "phoenix-1".to_string()])
        .await;

    let values = bounded(
        "the slow tasks after the restart",
        Duration::from_secs(90),
        rt.get_all(&slow),
    )
    .await
    .expect("every task submitted before the restart gives its answer");
    assert_eq!(values, (0..10).collect::<Vec<u64>>());
    let limit = Duration::from_secs(30);
    assert_eq!(
        bounded("after", limit, rt.get(&after))
            .await
            .expect("after"),
        13
    );
    assert_eq!(
        bounded("small", limit, rt.get(&small))
            .await
            .expect("small"),
        41
    );
    let blob = bounded("large", limit, rt.get(&large))
        .await
        .expect("large");
    assert_eq!(blob.len(), 300_000);
    // The earlier objects serve as arguments of new tasks: the new head knows where they are.
    let sums = bounded(
        "byte sums on the new head",
        limit,
        rt.get_all([byte_sum.remote(&rt, &large), byte_sum.remote(&rt, &made)]),
    )
    .await
    .expect("byte sums");
    assert_eq!(sums, vec![(300_000, 1_500_000), (200_000, 1_400_000)]);
    let more = bounded(
        "add on put",
        limit,
        rt.get(&add.remote(&rt, &small, &three)),
    )
    .await
    .expect("add on put");
    assert_eq!(more, 44);
    let s = c.status().await.unwrap();
    assert!(
        s.drivers >= 1,
        "the driver's session is at the new head: {s:?}"
    );
    // Actors do not survive, and calls on them say so.
    let err = bounded(
        "a call on the lost actor",
        limit,
        rt.get(&counter.increment()),
    )
    .await
    .expect_err("the actor is gone with the head");
    assert_eq!(err.kind(), Some(ErrorKind::ActorDied), "{err}");
    assert!(
        err.to_string()
            .contains("do not survive a restart of the head"),
        "{err}"
    );
    rt.shutdown().await;
}

/// Tells `full_disks` it runs inside the private mount namespace, with its tmpfs mounts here.
const CHILD_DISKS_ENV: &str = "FLOTILLA_TEST_FULL_DISKS";
/// The store's memory cap in `full_disks`: room for a few values, so later ones spill.
const SMALL_STORE: u64 = 4_000_000;

/// How this machine lets a test mount a tmpfs of its own: `unshare -m` as root, `unshare -rm`
/// (a user namespace) otherwise; `Err` says why it cannot.
fn private_mounts() -> Result<Vec<&'static str>, String> {
    let flags = if rustix::process::geteuid().is_root() {
        vec!["-m"]
    } else {
        vec!["-r", "-m"]
    };
    let probe = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let out = Command::new("unshare")
        .args(&flags)
        .args(["sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\""])
        .arg(probe.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("unshare cannot run: {e}"))?;
    if out.status.success() {
        Ok(flags)
    } else {
        Err(format!(
            "unshare {} cannot mount a tmpfs here: {}",
            flags.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Full disks, for real: the test runs itself again in a private mount namespace with a 1 MB
/// tmpfs as the shared-memory directory and a 3 MB tmpfs for spills (`FLOTILLA_SHM_DIR`,
/// `FLOTILLA_SPILL_DIR`). A put that does not fit in shared memory leaves no partial segment, says
/// why it took the slow path, and still stores the value; a result that cannot be spilled is not
/// kept (the store stays within its cap) and its task fails saying why. Skipped, with the reason
/// printed, where the machine cannot mount a private tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disks() {
    if let Ok(dir) = std::env::var(CHILD_DISKS_ENV) {
        full_disks_inside(Path::new(&dir)).await;
        return;
    }
    let flags = match private_mounts() {
        Ok(flags) => flags,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    for d in ["shm", "spill"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let script = "mount -t tmpfs -o size=1m,mode=0700 tmpfs \"$0/shm\" && \
                  mount -t tmpfs -o size=3m,mode=0700 tmpfs \"$0/spill\" && \
                  exec \"$1\" --exact full_disks --nocapture --test-threads 1";
    let mut child = Proc::spawn(
        "the test in a private mount namespace",
        Command::new("unshare")
            .args(&flags)
            .args(["sh", "-c", script])
            .arg(dir.path())
            .arg(std::env::current_exe().unwrap())
            .env(CHILD_DISKS_ENV, dir.path())
            .env("FLOTILLA_SHM_DIR", dir.path().join("shm"))
            .env("FLOTILLA_SPILL_DIR", dir.path().join("spill"))
            .env("FLOTILLA_OBJECT_STORE_BYTES", SMALL_STORE.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let c = child.child.take().unwrap();
    let out = bounded(
        "the test in a private mount namespace",
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || c.wait_with_output()),
    )
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the test inside failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("shared memory unavailable")
            && stderr.contains("No space left on device")
            && stderr.contains("uploading over HTTP instead"),
        "the driver says why it did not use shared memory:\n{stderr}"
    );
}

/// Inside the namespace of `full_disks`: a head and a worker of the real binary, this process
/// their driver.
async fn full_disks_inside(dir: &Path) {
    flotilla::process::init_logging();
    let c = TestCluster::start("full", 1, 2).await;
    let rt = c.connect().await;
    let segments = dir
        .join("shm")
        .join(format!("flotilla-{}", rustix::process::geteuid().as_raw()));
    let listing = |d: &Path| -> Vec<(String, u64)> {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                        (e.file_name().to_string_lossy().into_owned(), len)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    // 2 MB does not fit in the 1 MB shared-memory tmpfs: the put goes over HTTP instead.
    let big = rt
        .put(&Blob::from(vec![9u8; 2_000_000]))
        .await
        .expect("a put that does not fit in shared memory is uploaded instead");
    assert_eq!(listing(&segments), vec![], "no partial segment is left");
    assert_eq!(
        bounded("the big value", Duration::from_secs(30), rt.get(&big))
            .await
            .unwrap()
            .len(),
        2_000_000
    );

    // 1.5 MB results past a 4 MB cap spill into 3 MB of disk until it is full.
    let mut kept = vec![];
    let failure = loop {
        assert!(kept.len() < 10, "a 3 MB spill tmpfs never filled up");
        let r = make_bytes.remote(&rt, 1_500_000, 1);
        match bounded("make_bytes", Duration::from_secs(30), rt.get(&r)).await {
            Ok(_) => kept.push(r),
            Err(e) => break e,
        }
    };
    let message = failure.to_string();
    assert!(
        message.contains("cannot store the result") && message.contains("No space left on device"),
        "{message}"
    );
    // The failed result was not kept: memory within the cap, and what is on disk is exactly the
    // spilled values (no partial file).
    let s = c
        .wait_status("the store's figures", Duration::from_secs(30), |s| {
            s.workers.len() == 1 && s.workers[0].spilled_bytes > 0
        })
        .await;
    let w = &s.workers[0];
    assert!(w.memory_bytes <= SMALL_STORE, "over the cap: {w:?}");
    let spill_dirs = listing(&dir.join("spill"));
    let on_disk: u64 = spill_dirs
        .iter()
        .map(|(d, _)| {
            listing(&dir.join("spill").join(d))
                .iter()
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        on_disk, w.spilled_bytes,
        "files on disk are the spilled values: {w:?}"
    );
    // The worker still works once references are dropped.
    drop(kept);
    drop(big);
    still_works(&rt).await;
    rt.shutdown().await;
}

/// Kills (SIGKILL) what `flotilla up` started, when `up_status_drain_down` fails before `down`.
struct UpGuard {
    state_dir: PathBuf,
    pids: Vec<u32>,
}

impl UpGuard {
    fn state(&self) -> Option<flotilla::local::processes::UpState> {
        serde_json::from_slice(&std::fs::read(self.state_dir.join("cluster.json")).ok()?).ok()
    }
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        let mut pids = self.pids.clone();
        pids.extend(self.state().map(|s| s.pids).unwrap_or_default());
        for pid in pids {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Whether a process exists and is not a zombie (an orphan waiting for init to reap it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // "pid (comm) S ..."; comm may hold spaces and parentheses, the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
    }
}

fn run_cli(state_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = flotilla()
        .args(args)
        .env("FLOTILLA_STATE_DIR", state_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flotilla up`, `status`, `drain` and `down` as a user runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_status_drain_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut guard = UpGuard {
        state_dir: dir.path().to_path_buf(),
        pids: Vec::new(),
    };
    let up_dir = dir.path().to_path_buf();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &up_dir,
            &["up", "--workers", "2", "--port", "0", "--slots", "1"],
        )
    })
    .await
    .unwrap();
    let state = guard.state();
    guard.pids = state.as_ref().map(|s| s.pids.clone()).unwrap_or_default();
    assert!(ok, "flotilla up failed: {out}{err}");
    let state = state.expect("flotilla up records its processes");
    assert_eq!(state.pids.len(), 3, "a head and 2 workers: {state:?}");
    assert!(out.contains(&state.address), "up prints the address: {out}");
    assert!(
        state.pids.iter().all(|p| alive(*p)),
        "all processes run: {state:?}"
    );

    let (ok, out, err) = run_cli(dir.path(), &["status"]);
    assert!(ok, "flotilla status failed: {err}");
    let workers: Vec<&str> = out.lines().filter(|l| l.starts_with("worker-")).collect();
    assert_eq!(workers.len(), 2, "status lists 2 workers:\n{out}");
    assert!(
        workers.iter().any(|l| l.starts_with("worker-0 "))
            && workers.iter().any(|l| l.starts_with("worker-1 ")),
        "{out}"
    );

    let (ok, out, err) = run_cli(dir.path(), &["drain", "worker-0"]);
    assert!(ok, "flotilla drain failed: {out}{err}");
    assert!(out.contains("drained"), "drain reports it: {out}");
    let (_, out, _) = run_cli(dir.path(), &["status"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("worker-0 "))
        .unwrap_or_else(|| panic!("worker-0 listed:\n{out}"));
    assert!(
        line.contains("drained"),
        "worker-0 shows as drained: {line}"
    );

    let (ok, out, err) = run_cli(dir.path(), &["down"]);
    assert!(ok, "flotilla down failed: {out}{err}");
    assert!(out.contains("stopped 3 processes"), "{out}");
    assert!(guard.state().is_none(), "down removes the state file");
    let deadline = Instant::now() + Duration::from_secs(15);
    while state.pids.iter().any(|p| alive(*p)) {
        let left: HashMap<u32, bool> = state.pids.iter().map(|p| (*p, alive(*p))).collect();
        assert!(
            Instant::now() < deadline,
            "processes still running 15 s after down: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A head asked to listen on a non-loopback address without a token refuses to start, before it
/// opens the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_refuses_public_bind_without_token() {
    let (status, out, err) = run_to_exit(
        "head on 0.0.0.0 without a token",
        &["head", "--bind", "0.0.0.0:0", "--http-bind", "127.0.0.1:0"],
    )
    .await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        err.contains("FLOTILLA_TOKEN"),
        "the error names FLOTILLA_TOKEN: {err}"
    );
    // Refused before binding: it never listened, and the message names the requested port 0,
    // not one the OS handed out.
    assert!(!out.contains("listening"), "{out}");
    assert!(err.contains("0.0.0.0:0"), "{err}");
}

/// Runs `flotilla` with `args` and no token until it exits (bounded); returns its status and
/// standard output and error.
async fn run_to_exit(what: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut proc = Proc::spawn(
        what,
        flotilla()
            .args(args)
            .env_remove("FLOTILLA_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = proc.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{what}: still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
    proc.child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    proc.child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// A name that resolves to every interface (`0` is 0.0.0.0) is refused like the address itself,
/// on every listener of the head and the worker: the check is made on the address bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_resolve_beyond_loopback_are_refused_without_token() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "head gRPC on 0",
            &["head", "--bind", "0:0", "--http-bind", "127.0.0.1:0"],
        ),
        (
            "head HTTP on 0",
            &["head", "--bind", "127.0.0.1:0", "--http-bind", "0:0"],
        ),
        (
            "worker on 0",
            &["worker", "--head", "127.0.0.1:1", "--bind", "0:0"],
        ),
    ];
    for (what, args) in cases {
        let (status, out, err) = run_to_exit(what, args).await;
        assert!(!status.success(), "{what}: exit status {status}");
        assert!(err.contains("FLOTILLA_TOKEN"), "{what}: {err}");
        assert!(!out.contains("listening"), "{what}: {out}");
    }
}

/// `flotilla status | head -1`: a reader that goes away is no error, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_into_a_closed_pipe_exits_quietly() {
    let c = TestCluster::start("pipe", 1, 1).await;
    let mut status = flotilla()
        .args(["status", "--head", &c.address])
        .env("FLOTILLA_TOKEN", &c.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the first line is written.
    drop(status.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = status.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "status kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    status
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(exit.success(), "exit status {exit}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "nothing on stderr: {err}");
}

/// `flotilla down` signals only processes `flotilla up` started: a state file that lists another
/// process (planted, or a pid reused since) leaves it alone. `flotilla up` refuses a state
/// directory that others may write to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_signals_only_what_up_started() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut bystander = Proc::spawn(
        "a process up did not start",
        Command::new("sleep").arg("30"),
    );
    let pid = bystander.child().id();
    let planted = serde_json::json!({
        "address": "127.0.0.1:1", "http": "127.0.0.1:2", "token": "t",
        "pids": [pid], "starts": [1], "workers": []
    });
    std::fs::write(state.join("cluster.json"), planted.to_string()).unwrap();
    let (ok, out, err) = run_cli(&state, &["down"]);
    assert!(ok, "{err}");
    assert!(out.contains("stopped 0 processes"), "{out}");
    assert!(alive(pid), "down signalled a process up did not start");

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (ok, _, err) = run_cli(&open, &["up", "--workers", "1", "--port", "0"]);
    assert!(!ok, "up used a world-writable state directory");
    assert!(err.contains("other users may write"), "{err}");
}

/// Tells `a_driver_with_no_worker_is_told_why_it_waits` to act as the waiting driver.
const WAITING_DRIVER_ENV: &str = "FLOTILLA_TEST_WAITING_DRIVER";

/// A driver whose task has no worker to run on is told so after a few seconds, and `get` with a
/// timeout gives up with a clear error instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_no_worker_is_told_why_it_waits() {
    if let Ok(spec) = std::env::var(WAITING_DRIVER_ENV) {
        // As `#[flotilla::main]` does for a program.
        flotilla::process::init_logging();
        let (address, token) = spec.split_once(' ').expect("address and token");
        let rt = Runtime::connect(address, Some(token)).await.unwrap();
        let r = add.remote(&rt, 1, 2);
        match rt.get_timeout(&r, Duration::from_secs(7)).await {
            Err(e) => println!("GET FAILED: {e}"),
            Ok(v) => println!("GET RETURNED {v}"),
        }
        rt.shutdown().await;
        return;
    }
    let address = local_address();
    let token = new_token();
    let _head = start_head(&address, &token);
    let up = Instant::now() + Duration::from_secs(15);
    while admin::status(&address, Some(&token)).await.is_err() {
        assert!(Instant::now() < up, "the head did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut driver = Proc::spawn(
        "a driver with no worker",
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_driver_with_no_worker_is_told_why_it_waits",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(WAITING_DRIVER_ENV, format!("{address} {token}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.child().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the driver kept waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut out, mut err) = (String::new(), String::new());
    driver
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    driver
        .child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        out.contains("GET FAILED: timed out after 7s"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("no worker is registered at the head at"),
        "the driver says why it waits: {err}"
    );
}

/// A head that stops answering (SIGSTOP) is reported as such, with its address and how long it
/// was given, instead of as a bare transport error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_stops_answering_is_named() {
    let mut c = TestCluster::start("frozen", 1, 1).await;
    let rt = c.connect().await;
    assert_eq!(add.remote(&rt, 1, 1).await.unwrap(), 2);
    let pid = rustix::process::Pid::from_raw(c.head.child().id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let r = add.remote(&rt, 2, 2);
    // 30 s to notice, then up to 60 s of trying to reach it again.
    let e = bounded(
        "the driver notices the frozen head",
        Duration::from_secs(120),
        rt.get(&r),
    )
    .await
    .expect_err("a frozen head answers nothing");
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let message = e.to_string();
    assert!(
        message.contains(&c.address) && message.contains("did not answer within 30s"),
        "{message}"
    );
}

/// Polls the head's status until `ok` holds for it (bounded).
async fn wait_head(
    address: &str,
    token: &str,
    what: &str,
    ok: impl Fn(&pb::StatusReply) -> bool,
) -> pb::StatusReply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = admin::status(address, Some(token)).await;
        if let Ok(s) = &last {
            if ok(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job<'a>(s: &'a pb::StatusReply, id: &str) -> Option<&'a pb::JobStatus> {
    s.jobs.iter().find(|j| j.job == id)
}

/// Cancelling a job stops its tasks that run on worker threads. One that polls
/// `flotilla::cancelled()` returns within the grace and its worker stays; one that does not
/// return (a long blocking sleep) is stopped by its worker exiting with `EXIT_CANCEL_FORCED`,
/// after which the process cluster starts the worker again. The head then shows none of the
/// job's tasks left, and another job's task that was running on the same worker is retried there
/// without using up its retries (it has none) and returns its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_leaves_nothing_running_on_workers() {
    let cluster = ProcessCluster::start(Path::new(EXE), 1, 3)
        .await
        .expect("the cluster starts");
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let first_pid = cluster.worker_pid(0).expect("the worker runs");
    let running = |id: &'static str| {
        move |s: &pb::StatusReply| {
            job(s, id).is_some_and(|j| j.tasks_live == 1) && s.tasks_running >= 1
        }
    };

    // A task that polls the cancel flag stops by itself.
    let polite = Runtime::connect_for_job(&address, Some(&token), "polite")
        .await
        .unwrap();
    let r = work_until_cancelled.remote(&polite, 600_000);
    wait_head(
        &address,
        &token,
        "the polite task running",
        running("polite"),
    )
    .await;
    admin::cancel_job(&address, Some(&token), "polite")
        .await
        .unwrap();
    let err = bounded(
        "the cancelled task",
        Duration::from_secs(30),
        polite.get(&r),
    )
    .await
    .expect_err("a cancelled task gives no value");
    assert_eq!(err.kind(), Some(ErrorKind::Cancelled), "{err}");

    // A task that ignores the cancel, beside another job's task on the same worker.
    let stuck = Runtime::connect_for_job(&address, Some(&token), "stuck")
        .await
        .unwrap();
    let other = Runtime::connect_for_job(&address, Some(&token), "other")
        .await
        .unwrap();
    let s = sleep_then.remote(&stuck, 600_000, 1);
    let no_retries = TaskOptions::default().max_retries(0);
    let o = sleep_then.remote_with(&other, &no_retries, 3000, 42);
    wait_head(&address, &token, "both jobs' tasks running", |st| {
        running("stuck")(st) && running("other")(st) && st.tasks_running == 2
    })
    .await;
    let reply = admin::cancel_job(&address, Some(&token), "stuck")
        .await
        .unwrap();
    assert_eq!(reply.tasks_cancelled, 1, "{reply:?}");

    // The worker exits past the grace and is started again under its name.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.worker_restarts(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker was not started again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(first_pid),
        "the worker process that ran the stuck task is gone"
    );
    assert_ne!(cluster.worker_pid(0), Some(first_pid));
    let value = bounded(
        "the other job's task",
        Duration::from_secs(30),
        other.get(&o),
    )
    .await
    .expect("the other job's task is retried without using up its retries");
    assert_eq!(value, 42);
    let err = bounded("the stuck task", Duration::from_secs(30), stuck.get(&s))
        .await
        .expect_err("the stuck task was cancelled");
    assert_eq!(err.kind(), Some(ErrorKind::Cancelled), "{err}");
    let st = wait_head(
        &address,
        &token,
        "no task of the cancelled jobs left",
        |st| {
            job(st, "stuck").is_some_and(|j| j.tasks_live == 0)
                && job(st, "other").is_some_and(|j| j.tasks_finished == 1)
        },
    )
    .await;
    let stuck_job = job(&st, "stuck").unwrap();
    assert_eq!((stuck_job.tasks_failed, stuck_job.tasks_finished), (1, 0));
    let other_job = job(&st, "other").unwrap();
    assert_eq!((other_job.tasks_failed, other_job.tasks_finished), (0, 1));
    assert_eq!(
        cluster.worker_restarts(0),
        1,
        "only the task that ignored its cancel cost a restart"
    );
    still_works(&other).await;
    for rt in [polite, stuck, other] {
        rt.shutdown().await;
    }
}

/// Runs `nested_sum(n)` (a task summing `0..n` by submitting a task per element) to its answer.
async fn run_nested_sum(rt: &Runtime, n: i64) -> i64 {
    bounded(
        "nested_sum",
        Duration::from_secs(30),
        rt.get(&nested_sum.remote(rt, n)),
    )
    .await
    .expect("nested_sum runs")
}

/// Tasks a job's task submits through its worker count for the job at the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_submitted_by_a_jobs_tasks_count_for_the_job() {
    let cluster = ProcessCluster::start(Path::new(EXE), 2, 2)
        .await
        .expect("the cluster starts");
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let rt = Runtime::connect_for_job(&address, Some(&token), "nest")
        .await
        .unwrap();
    assert_eq!(run_nested_sum(&rt, 5).await, 10);
    let st = wait_head(&address, &token, "the job's counts", |st| {
        job(st, "nest").is_some_and(|j| j.tasks_finished == 6)
    })
    .await;
    let j = job(&st, "nest").unwrap();
    assert_eq!(
        (
            j.tasks_submitted,
            j.tasks_finished,
            j.tasks_failed,
            j.tasks_live
        ),
        (6, 6, 0, 0),
        "nested_sum and the 5 adds it submitted: {j:?}"
    );
    rt.shutdown().await;
}

// ------------------------------------------------------------------------------------ leases

/// Runs `warm` tasks one at a time until the driver holds a lease for their function (a run went
/// straight to a worker), then submits `task` on it. The lease goes back after a short idle
/// time, so in the rare case it went back in between the submission went through the head: that
/// one is cancelled and the warm-up starts again.
async fn on_a_lease<T: serde::de::DeserializeOwned + 'static>(
    rt: &Runtime,
    warm: impl Fn() -> ObjectRef<T>,
    task: impl Fn() -> ObjectRef<T>,
) -> ObjectRef<T> {
    for _ in 0..500 {
        let sent = rt.direct_calls();
        let w = warm();
        bounded("a warm-up task", Duration::from_secs(30), rt.get(&w))
            .await
            .expect("a warm-up task runs");
        if rt.direct_calls() == sent {
            continue;
        }
        let sent = rt.direct_calls();
        let r = task();
        if rt.direct_calls() > sent {
            return r;
        }
        rt.cancel(&r);
    }
    panic!("no task went on a lease");
}

/// The warm-up task of the lease tests: it runs on a worker thread (a task whose runs average
/// a few microseconds runs on the worker's I/O thread), as the long ones do.
fn warm_sleep(rt: &Runtime) -> ObjectRef<u64> {
    sleep_then.remote(rt, 1, 0)
}

/// A worker killed while a task runs on a leased slot: the driver sends it through the head,
/// which retries it as it retries a task of its own (the retry counted) and it gives its answer;
/// a leased task with no retries left fails as such a task does when its worker dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_during_a_leased_task() {
    let mut c = TestCluster::start("lkill", 1, 2).await;
    let rt = c.connect().await;
    let r = on_a_lease(&rt, || warm_sleep(&rt), || sleep_then.remote(&rt, 2_000, 7)).await;
    let spare = c.worker("lkill-1", 2, &[]);
    c.workers.push(spare);
    c.wait_registered(&["lkill-0".to_string(), "lkill-1".to_string()])
        .await;
    let retried = c.status().await.unwrap().tasks_retried;
    c.workers[0].kill();
    let value = bounded("the leased task", Duration::from_secs(30), rt.get(&r))
        .await
        .expect("retried on the other worker");
    assert_eq!(value, 7);
    c.wait_status("the retry counted", Duration::from_secs(30), |s| {
        s.tasks_retried > retried && s.workers.len() == 1
    })
    .await;

    let none = TaskOptions::default().max_retries(0);
    let r = on_a_lease(
        &rt,
        || warm_sleep(&rt),
        || sleep_then.remote_with(&rt, &none, 20_000, 8),
    )
    .await;
    c.workers[1].kill();
    let err = bounded("the leased task", Duration::from_secs(30), rt.get(&r))
        .await
        .expect_err("its worker died and it had no retries");
    assert_eq!(err.kind(), Some(ErrorKind::WorkerDied), "{err}");
    assert!(err.to_string().contains("no retries were left"), "{err}");
    rt.shutdown().await;
}

/// A drain of a worker with a lease out: the lease is revoked, the drain waits for the task on
/// it (the worker is not stopped while busy) and then completes; tasks submitted meanwhile run on
/// the other worker; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_leased_tasks() {
    let mut c = TestCluster::start("ldrain", 2, 2).await;
    let rt = c.connect().await;
    let started = Instant::now();
    let r = on_a_lease(&rt, || warm_sleep(&rt), || sleep_then.remote(&rt, 1_500, 9)).await;
    // The leased slot is busy at the head with no task of its own running there.
    let s = c
        .wait_status("the leased slot", Duration::from_secs(30), |s| {
            s.tasks_running == 0 && s.workers.iter().filter(|w| w.busy_slots == 1).count() == 1
        })
        .await;
    let leased = s
        .workers
        .iter()
        .find(|w| w.busy_slots == 1)
        .unwrap()
        .name
        .clone();
    assert_eq!(
        s.workers.iter().find(|w| w.name == leased).unwrap().state(),
        pb::WorkerState::Busy
    );
    let (address, token, name) = (c.address.clone(), c.token.clone(), leased.clone());
    let drain = tokio::spawn(async move {
        admin::drain(&address, Some(&token), &name, Duration::from_secs(25)).await
    });
    let more: Vec<_> = (0..4).map(|i| add.remote(&rt, i, 1)).collect();
    let values = bounded(
        "tasks during the drain",
        Duration::from_secs(30),
        rt.get_all(&more),
    )
    .await
    .expect("they run on the other worker");
    assert_eq!(values, vec![1, 2, 3, 4]);
    let reply = bounded("the drain", Duration::from_secs(30), drain)
        .await
        .unwrap()
        .expect("the head answers the drain");
    assert_eq!(reply.outcome(), pb::DrainOutcome::Drained, "{reply:?}");
    // It ended after the leased task did (which sleeps 1.5 s), and that task gave its answer.
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    let value = bounded("the leased task", Duration::from_secs(5), rt.get(&r))
        .await
        .expect("the leased task finished");
    assert_eq!(value, 9);
    let index = if leased.ends_with("-0") { 0 } else { 1 };
    assert!(
        c.workers[index].child().try_wait().unwrap().is_none(),
        "the drained worker was not stopped"
    );
    c.wait_status("the drained worker idle", Duration::from_secs(30), |s| {
        s.workers
            .iter()
            .any(|w| w.name == leased && w.state() == pb::WorkerState::Drained && w.busy_slots == 0)
    })
    .await;
    rt.shutdown().await;
}

/// Cancelling a job stops its tasks on leased slots as it stops those the head dispatched: one
/// that polls `flotilla::cancelled()` returns, one that does not is stopped by its worker
/// exiting after the grace (and the worker is started again); both fail as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_leased_tasks_are_stopped() {
    let cluster = ProcessCluster::start(Path::new(EXE), 1, 2)
        .await
        .expect("the cluster starts");
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let first_pid = cluster.worker_pid(0).expect("the worker runs");

    let polite = Runtime::connect_for_job(&address, Some(&token), "lpolite")
        .await
        .unwrap();
    let r = on_a_lease(
        &polite,
        || work_until_cancelled.remote(&polite, 1),
        || work_until_cancelled.remote(&polite, 600_000),
    )
    .await;
    admin::cancel_job(&address, Some(&token), "lpolite")
        .await
        .unwrap();
    let err = bounded(
        "the cancelled task",
        Duration::from_secs(30),
        polite.get(&r),
    )
    .await
    .expect_err("a cancelled task gives no value");
    assert_eq!(err.kind(), Some(ErrorKind::Cancelled), "{err}");
    wait_head(&address, &token, "the polite job's task counted", |st| {
        job(st, "lpolite").is_some_and(|j| j.tasks_failed >= 1 && j.tasks_live == 0)
    })
    .await;
    assert_eq!(
        cluster.worker_restarts(0),
        0,
        "a task that returns costs no restart"
    );

    let stuck = Runtime::connect_for_job(&address, Some(&token), "lstuck")
        .await
        .unwrap();
    let s = on_a_lease(
        &stuck,
        || warm_sleep(&stuck),
        || sleep_then.remote(&stuck, 600_000, 1),
    )
    .await;
    admin::cancel_job(&address, Some(&token), "lstuck")
        .await
        .unwrap();
    let err = bounded("the stuck task", Duration::from_secs(30), stuck.get(&s))
        .await
        .expect_err("the stuck task was cancelled");
    assert_eq!(err.kind(), Some(ErrorKind::Cancelled), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.worker_restarts(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker was not started again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(first_pid),
        "the worker that ran the stuck task is gone"
    );
    let other = Runtime::connect(&address, Some(&token)).await.unwrap();
    still_works(&other).await;
    for rt in [polite, stuck, other] {
        rt.shutdown().await;
    }
}

/// The driver process of `driver_killed_while_holding_a_lease`: runs a long task on a leased
/// slot, says so and waits to be killed.
async fn child_lease_driver(spec: &str) {
    let (address, token) = spec.split_once(' ').expect("address and token");
    let rt = Runtime::connect(address, Some(token))
        .await
        .expect("the child driver connects");
    let r = on_a_lease(
        &rt,
        || work_until_cancelled.remote(&rt, 1),
        || work_until_cancelled.remote(&rt, 600_000),
    )
    .await;
    println!("CHILD LEASED");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(r);
}

/// A driver killed with SIGKILL while it holds a lease (a task running on it): the head frees
/// the slot, the worker stops the task, and another driver's task runs in that slot (the only
/// one there is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_while_holding_a_lease() {
    if let Ok(spec) = std::env::var(CHILD_LEASE_ENV) {
        child_lease_driver(&spec).await;
        return;
    }
    let c = TestCluster::start("lorphan", 1, 1).await;
    let mut driver = child_driver_process(
        "driver_killed_while_holding_a_lease",
        CHILD_LEASE_ENV,
        &c,
        "CHILD LEASED",
    )
    .await;
    c.wait_status("the leased slot busy", Duration::from_secs(30), |s| {
        s.tasks_running == 0 && s.workers.iter().all(|w| w.busy_slots == 1)
    })
    .await;
    driver.kill();
    c.wait_status("the slot freed", Duration::from_secs(30), |s| {
        s.workers.iter().all(|w| w.busy_slots == 0)
    })
    .await;
    let rt = c.connect().await;
    still_works(&rt).await;
    rt.shutdown().await;
}

/// A function that submits tasks of its own runs through the head even while its driver would
/// lease a slot for it (a worker refuses it on a lease), so what it submits counts for its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_submits_tasks_is_not_run_on_a_lease() {
    let cluster = ProcessCluster::start(Path::new(EXE), 1, 2)
        .await
        .expect("the cluster starts");
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let rt = Runtime::connect_for_job(&address, Some(&token), "lnest")
        .await
        .unwrap();
    let mut calls = 0u64;
    while rt.direct_calls() == 0 {
        assert!(calls < 200, "no call of nested_sum was pushed on a lease");
        assert_eq!(run_nested_sum(&rt, 2).await, 1);
        calls += 1;
    }
    // The one pushed on the lease was refused there and ran through the head.
    let sent = rt.direct_calls();
    for _ in 0..3 {
        assert_eq!(run_nested_sum(&rt, 2).await, 1);
        calls += 1;
    }
    assert_eq!(rt.direct_calls(), sent, "it asks for no lease again");
    // Each call and its two tasks count for the job.
    wait_head(&address, &token, "the job's counts", |st| {
        job(st, "lnest").is_some_and(|j| j.tasks_finished == 3 * calls && j.tasks_live == 0)
    })
    .await;
    rt.shutdown().await;
}
