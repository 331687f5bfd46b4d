//! ComputeJobs end to end, as a user runs them, on one machine: the fake API server, the real
//! `kubectl`, the operator binary out of process, and the process kubelet running the real
//! `flotilla` binary as head, workers and drivers.
//!
//! One test shares one cluster between many jobs at once (each job is its own scenario); the
//! other runs a job with a cluster of its own. The runtime binary must be built next to the
//! operator's (`cargo test --workspace` does that; alone: `cargo build -p flotilla --bin
//! flotilla`).

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{bin_dir, eventually, repo};
use flotilla_operator::{
    crd::{ComputeCluster, ComputeJob, ComputeJobStatus, JobPhase},
    head::Head,
};
use flotilla_testenv::{
    apiserver::FakeApiServer,
    kubelet::{ImageMapping, KubeletConfig, ProcessKubelet},
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{api::ListParams, Api, Client};

const NS: &str = "default";
/// Generous: debug builds on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(120);

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The local Kubernetes with the operator and a kubelet.
struct Kube {
    api: FakeApiServer,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    _operator: Option<Process>,
    _kubelet: Option<ProcessKubelet>,
}

impl Kube {
    async fn start() -> Self {
        let api = FakeApiServer::start().await.expect("fake API server");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let mut kube = Kube {
            api,
            kubeconfig,
            dir,
            _operator: None,
            _kubelet: None,
        };
        kube.kubectl_ok(&["apply", "-f", &repo().join("crds").display().to_string()]);
        let config = KubeletConfig {
            node_name: "local".into(),
            images: vec![ImageMapping {
                image: "flotilla".into(),
                bin_dir: bin_dir(),
                entrypoint: Some(bin_dir().join("flotilla")),
            }],
            log_dir: kube.dir.path().join("pods"),
            restart_backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            schedule: true,
        };
        kube._kubelet = Some(
            ProcessKubelet::start(kube.client().await, config)
                .await
                .expect("kubelet"),
        );
        let log = std::fs::File::create(kube.dir.path().join("operator.log")).expect("log");
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla-operator"))
            .args(["run", "--http-bind", &http.to_string()])
            .env("KUBECONFIG", &kube.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("operator starts");
        kube._operator = Some(Process(child));
        kube
    }

    async fn client(&self) -> Client {
        self.api.client().await.expect("kube client")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}\noperator log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.operator_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`; the output and whether it succeeded.
    fn apply(&self, yaml: &str) -> (bool, String) {
        let mut apply = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        std::io::Write::write_all(&mut apply.stdin.take().expect("stdin"), yaml.as_bytes())
            .expect("manifest written");
        let out = apply.wait_with_output().expect("kubectl ends");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn apply_ok(&self, yaml: &str) {
        let (ok, text) = self.apply(yaml);
        assert!(ok, "kubectl apply of {yaml}: {text}");
    }

    fn operator_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }

    async fn status(&self, job: &str) -> Option<ComputeJobStatus> {
        let jobs: Api<ComputeJob> = Api::namespaced(self.client().await, NS);
        jobs.get_opt(job).await.ok().flatten()?.status
    }

    /// Waits until job `name` is in `phase`, and returns its status.
    async fn wait_phase(&self, name: &str, phase: JobPhase) -> ComputeJobStatus {
        let what = format!("job {name} {phase:?}");
        let start = Instant::now();
        loop {
            let status = self.status(name).await;
            if let Some(status) = status.as_ref().filter(|s| s.phase == Some(phase)) {
                return status.clone();
            }
            assert!(
                start.elapsed() < LONG,
                "timed out waiting for {what}; status: {status:#?}\noperator log:\n{}",
                self.operator_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The head of `cluster`, asked through its own API.
    async fn head(&self, cluster: &str) -> Option<Head> {
        let client = self.client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let ip = pods
            .get_opt(&format!("{cluster}-head"))
            .await
            .ok()??
            .status?
            .pod_ip?;
        let secrets: Api<Secret> = Api::namespaced(client, NS);
        let secret = secrets.get_opt(&format!("{cluster}-token")).await.ok()??;
        let token = String::from_utf8(secret.data?.get("token")?.0.clone()).ok()?;
        Head::connect(&ip, &token).await.ok()
    }

    /// Tasks of `job` the head still has (waiting, queued or running).
    async fn live_tasks(&self, cluster: &str, job: &str) -> Option<u64> {
        let mut head = self.head(cluster).await?;
        Some(head.job(job).await.ok()?.map_or(0, |j| j.tasks_live))
    }

    async fn pod_exists(&self, name: &str) -> bool {
        let pods: Api<Pod> = Api::namespaced(self.client().await, NS);
        pods.get_opt(name).await.ok().flatten().is_some()
    }
}

/// A job on the cluster `minimal` running `flotilla` with `args`, plus `extra` spec fields.
fn job(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {{name: {name}}}\nspec:\n  clusterRef: {{name: minimal}}\n  args: [{}]\n{extra}",
        args.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_an_existing_cluster() {
    let kube = Kube::start().await;

    // Bad input first: refused by the API server, or said in the status.
    let both = "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {name: both}\nspec:\n  clusterRef: {name: minimal}\n  cluster: {image: flotilla, workerGroups: [{name: w, replicas: 1}]}\n";
    let neither = "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {name: neither}\nspec: {args: [x]}\n";
    for manifest in [both, neither] {
        let (ok, text) = kube.apply(manifest);
        assert!(!ok, "{manifest} was accepted");
        assert!(
            text.contains("exactly one of clusterRef and cluster must be set"),
            "{text}"
        );
    }
    kube.apply_ok(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {name: nowhere}\nspec:\n  clusterRef: {name: nope}\n  args: [example, square]\n  startupDeadlineSeconds: 3\n",
    );

    // The cluster, and every job at once.
    kube.kubectl_ok(&[
        "apply",
        "-f",
        &repo()
            .join("examples/minimal-cluster.yaml")
            .display()
            .to_string(),
    ]);
    kube.kubectl_ok(&[
        "apply",
        "-f",
        &repo()
            .join("examples/job-existing-cluster.yaml")
            .display()
            .to_string(),
    ]);
    kube.apply_ok(&job(
        "fails",
        &[
            "example",
            "fail",
            "--tasks",
            "2",
            "--message",
            "boom from the driver",
        ],
        "  backoffLimit: 2\n",
    ));
    kube.apply_ok(&job(
        "overdue",
        &["example", "sleep", "--tasks", "3", "--millis", "30000"],
        "  activeDeadlineSeconds: 3\n",
    ));
    kube.apply_ok(&job(
        "brief",
        &["example", "square"],
        "  ttlSecondsAfterFinished: 1\n",
    ));
    kube.apply_ok(&job(
        "deleted",
        &["example", "sleep", "--tasks", "2", "--millis", "30000"],
        "",
    ));
    let mut missing = job("missing", &[], "  backoffLimit: 0\n");
    missing.push_str("  entrypoint: [no-such-program]\n");
    kube.apply_ok(&missing);

    // A cluster that does not exist: said, then Failed at the startup deadline.
    let nowhere = kube.wait_phase("nowhere", JobPhase::Failed).await;
    assert!(
        nowhere
            .message
            .as_deref()
            .is_some_and(|m| m.contains("ComputeCluster nope does not exist")),
        "{nowhere:#?}"
    );
    assert!(nowhere
        .conditions
        .iter()
        .any(|c| c.type_ == "ClusterReady" && c.reason == "ClusterNotFound"));

    // Success: the printed result through `kubectl logs`, and the progress counts.
    let square = kube.wait_phase("square", JobPhase::Succeeded).await;
    assert_eq!(square.attempts, 1);
    let progress = square.progress.clone().expect("progress");
    assert_eq!(
        (
            progress.tasks_submitted,
            progress.tasks_finished,
            progress.tasks_failed
        ),
        (1, 1, 0),
        "{square:#?}"
    );
    let driver = square.driver_pod.clone().expect("driver pod");
    assert_eq!(kube.kubectl_ok(&["logs", &driver]).trim(), "25");
    assert_eq!(
        kube.kubectl_ok(&["logs", &driver, "--tail", "1"]).trim(),
        "25"
    );
    assert!(square.start_time.is_some() && square.completion_time.is_some());
    let table = kube.kubectl_ok(&["get", "fjob", "square"]);
    assert!(
        table.contains("Succeeded") && table.contains("minimal"),
        "{table}"
    );
    let events = kube.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=square",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("DriverCreated"), "{events}");

    // A driver that fails is retried backoffLimit times, then Failed with its message.
    let fails = kube.wait_phase("fails", JobPhase::Failed).await;
    assert_eq!((fails.attempts, fails.failed), (3, 3), "{fails:#?}");
    assert!(
        fails
            .message
            .as_deref()
            .is_some_and(|m| m.contains("boom from the driver") && m.contains("backoffLimit 2")),
        "{fails:#?}"
    );

    // A driver that cannot start at all is the application's failure, in the runtime's words.
    let missing = kube.wait_phase("missing", JobPhase::Failed).await;
    assert!(
        missing
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no-such-program")),
        "{missing:#?}"
    );
    assert_eq!(missing.failed, 1);

    // A driver pod deleted mid-run is retried without using up backoffLimit.
    kube.apply_ok(&job(
        "lost",
        &["example", "sleep", "--tasks", "2", "--millis", "4000"],
        "",
    ));
    let lost = kube.wait_phase("lost", JobPhase::Running).await;
    kube.kubectl_ok(&[
        "delete",
        "pod",
        lost.driver_pod.as_deref().unwrap(),
        "--wait=false",
    ]);
    let lost = kube.wait_phase("lost", JobPhase::Succeeded).await;
    assert_eq!(
        (lost.attempts, lost.failed, lost.infrastructure_failures),
        (2, 0, 1),
        "{lost:#?}"
    );

    // The active deadline stops a long job, and the head keeps none of its tasks.
    let overdue = kube.wait_phase("overdue", JobPhase::Failed).await;
    assert!(overdue
        .conditions
        .iter()
        .any(|c| c.type_ == "Failed" && c.reason == "DeadlineExceeded"));
    let id = overdue.job_id.clone().expect("job id");
    eventually(
        "the overdue job's tasks gone from the head",
        LONG,
        || async { (kube.live_tasks("minimal", &id).await? == 0).then_some(()) },
    )
    .await;
    eventually("the overdue job's driver gone", LONG, || async {
        (!kube
            .pod_exists(overdue.driver_pod.as_deref().unwrap())
            .await)
            .then_some(())
    })
    .await;

    // Suspend and resume.
    kube.apply_ok(&job(
        "pausing",
        &["example", "sleep", "--tasks", "1", "--millis", "3000"],
        "",
    ));
    kube.wait_phase("pausing", JobPhase::Running).await;
    kube.kubectl_ok(&[
        "patch",
        "fjob",
        "pausing",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let paused = kube.wait_phase("pausing", JobPhase::Suspended).await;
    assert!(paused.driver_pod.is_none());
    eventually("the suspended job's driver gone", LONG, || async {
        (!kube.pod_exists("pausing-driver-1").await).then_some(())
    })
    .await;
    kube.kubectl_ok(&[
        "patch",
        "fjob",
        "pausing",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let resumed = kube.wait_phase("pausing", JobPhase::Succeeded).await;
    assert_eq!((resumed.attempts, resumed.failed), (2, 0), "{resumed:#?}");

    // A finished job is removed after its TTL.
    eventually("the brief job removed after its TTL", LONG, || async {
        let jobs: Api<ComputeJob> = Api::namespaced(kube.client().await, NS);
        jobs.get_opt("brief").await.ok()?.is_none().then_some(())
    })
    .await;

    // Deleting a running job cancels its work at the head, then its driver goes.
    let deleted = kube.wait_phase("deleted", JobPhase::Running).await;
    let id = deleted.job_id.clone().expect("job id");
    eventually("the deleted job's tasks running", LONG, || async {
        (kube.live_tasks("minimal", &id).await? == 2).then_some(())
    })
    .await;
    kube.kubectl_ok(&["delete", "fjob", "deleted", "--wait=false"]);
    eventually("the deleted job's tasks cancelled", LONG, || async {
        (kube.live_tasks("minimal", &id).await? == 0).then_some(())
    })
    .await;
    eventually("the deleted job and its driver gone", LONG, || async {
        let jobs: Api<ComputeJob> = Api::namespaced(kube.client().await, NS);
        let gone = jobs.get_opt("deleted").await.ok()?.is_none()
            && !kube.pod_exists("deleted-driver-1").await;
        gone.then_some(())
    })
    .await;
    // The shared cluster is untouched by all of it.
    let clusters: Api<ComputeCluster> = Api::namespaced(kube.client().await, NS);
    assert!(clusters.get_opt("minimal").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_its_own_cluster() {
    let kube = Kube::start().await;
    kube.kubectl_ok(&[
        "apply",
        "-f",
        &repo()
            .join("examples/job-own-cluster.yaml")
            .display()
            .to_string(),
    ]);
    let status = kube.wait_phase("pi", JobPhase::Succeeded).await;
    assert_eq!(status.cluster_name.as_deref(), Some("pi-cluster"));
    let out = kube.kubectl_ok(&["logs", status.driver_pod.as_deref().unwrap()]);
    assert!(out.starts_with("π ≈ 3.1"), "{out}");
    let progress = status.progress.expect("progress");
    assert_eq!((progress.tasks_submitted, progress.tasks_finished), (4, 4));
    // The cluster goes with the job's end; the job stays.
    eventually("the job's own cluster gone", LONG, || async {
        let clusters: Api<ComputeCluster> = Api::namespaced(kube.client().await, NS);
        let pods: Api<Pod> = Api::namespaced(kube.client().await, NS);
        let left = pods
            .list(&ListParams::default().labels("flotilla.dev/cluster=pi-cluster"))
            .await
            .ok()?
            .items;
        (clusters.get_opt("pi-cluster").await.ok()?.is_none() && left.is_empty()).then_some(())
    })
    .await;
    assert!(kube.status("pi").await.is_some());
}
