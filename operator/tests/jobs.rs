//! ComputeJobs end to end, as a user runs them, on one machine: the fake API server, the real
//! `kubectl`, the operator binary out of process, and the process kubelet running the real
//! `flotilla` binary as head, workers and drivers.
//!
//! With `USE_EXISTING_CLUSTER=true` and `KUBECONFIG` the same tests run against that cluster, as
//! `e2e.rs` does: each in a namespace of its own, deleted when the test ends, with the process
//! kubelet only where the cluster has no nodes of its own.
//!
//! One test shares one cluster between many jobs at once (each job is its own scenario); the
//! other runs a job with a cluster of its own. The runtime binary must be built next to the
//! operator's (`cargo test --workspace` does that; alone: `cargo build -p flotilla --bin
//! flotilla`).

use std::time::{Duration, Instant};

mod common;

use common::{
    eventually,
    kube::{head_of, Kube, Process},
    repo,
};
use flotilla_operator::{
    crd::{ComputeCluster, ComputeJob, ComputeJobStatus, JobPhase},
    head::Head,
};
use flotilla_proto::contract::EXIT_CANCEL_FORCED;
use flotilla_testenv::kubelet::ProcessKubelet;
use k8s_openapi::api::core::v1::Pod;
use kube::{api::ListParams, Api};

/// Generous: debug builds on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(120);

/// The Kubernetes of `common::kube` (the fake API server, or an existing cluster) with the
/// operator and, where the cluster has no nodes of its own, the process kubelet.
struct Env {
    // Stopped first (fields drop in order), while the Kubernetes and its directory are still there.
    _operator: Process,
    _kubelet: Option<ProcessKubelet>,
    kube: Kube,
}

impl std::ops::Deref for Env {
    type Target = Kube;

    fn deref(&self) -> &Kube {
        &self.kube
    }
}

impl Env {
    async fn start() -> Self {
        let kube = Kube::start().await;
        let kubelet = kube.kubelet().await;
        let (operator, _) = kube.operator("operator", &[]);
        Env {
            _operator: operator,
            _kubelet: kubelet,
            kube,
        }
    }

    fn apply_ok(&self, yaml: &str) {
        let (ok, text) = self.apply(yaml);
        assert!(ok, "kubectl apply of {yaml}: {text}");
    }

    fn log(&self) -> String {
        self.operator_log("operator")
    }

    async fn status(&self, job: &str) -> Option<ComputeJobStatus> {
        let jobs: Api<ComputeJob> = Api::default_namespaced(self.client().await);
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
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The head of `cluster`, asked through its own API.
    async fn head(&self, cluster: &str) -> Option<Head> {
        let (ip, token) = head_of(&self.client().await, cluster).await?;
        Head::connect(&ip, &token).await.ok()
    }

    /// Tasks of `job` the head still has (waiting, queued or running).
    async fn live_tasks(&self, cluster: &str, job: &str) -> Option<u64> {
        let mut head = self.head(cluster).await?;
        Some(head.job(job).await.ok()?.map_or(0, |j| j.tasks_live))
    }

    async fn pod_exists(&self, name: &str) -> bool {
        let pods: Api<Pod> = Api::default_namespaced(self.client().await);
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
    let kube = Env::start().await;

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
    // Its tasks slept on worker threads, which only the worker's exit stops: a worker exited with
    // EXIT_CANCEL_FORCED and its pod's container was started again.
    eventually("a worker restarted after a forced cancel", LONG, || async {
        let pods: Api<Pod> = Api::default_namespaced(kube.client().await);
        let selector = "flotilla.dev/cluster=minimal,flotilla.dev/role=worker";
        let listed = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        listed
            .items
            .iter()
            .flat_map(|p| p.status.as_ref()?.container_statuses.clone())
            .flatten()
            .any(|c| {
                let forced = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == i32::from(EXIT_CANCEL_FORCED));
                forced && c.restart_count >= 1 && c.ready
            })
            .then_some(())
    })
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
        let jobs: Api<ComputeJob> = Api::default_namespaced(kube.client().await);
        jobs.get_opt("brief").await.ok()?.is_none().then_some(())
    })
    .await;

    // Deleting a running job cancels its work at the head, then its driver goes.
    // (Started only now: its tasks would hold slots the jobs above need.)
    kube.apply_ok(&job(
        "deleted",
        &["example", "sleep", "--tasks", "2", "--millis", "600000"],
        "",
    ));
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
        let jobs: Api<ComputeJob> = Api::default_namespaced(kube.client().await);
        let gone = jobs.get_opt("deleted").await.ok()?.is_none()
            && !kube.pod_exists("deleted-driver-1").await;
        gone.then_some(())
    })
    .await;
    // The shared cluster is untouched by all of it.
    let clusters: Api<ComputeCluster> = Api::default_namespaced(kube.client().await);
    assert!(clusters.get_opt("minimal").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_its_own_cluster() {
    let kube = Env::start().await;
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
        let clusters: Api<ComputeCluster> = Api::default_namespaced(kube.client().await);
        let pods: Api<Pod> = Api::default_namespaced(kube.client().await);
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
