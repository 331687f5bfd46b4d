//! The job controller's speed and size, on the local Kubernetes (fake API server, process
//! kubelet running the release `flotilla` binary, the release operator out of process):
//! - `job_apply_to_driver_running`: from starting `kubectl apply` of a job on a running cluster
//!   to its driver pod running (target ≤ 1 s);
//! - `own_cluster_job_to_succeeded`: from starting `kubectl apply` of a trivial job with its own
//!   2-worker cluster to the job `Succeeded` (target ≤ 3 s);
//! - `rss_200_jobs`: the operator's resident memory with 100 finished and 100 running jobs
//!   (their drivers are `/bin/true` and `/bin/sleep`, so the machine holds 100 drivers).
//!
//! Run with `scripts/bench-operator.sh` (it builds the release binaries next to this program).

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use common::{kubectl_apply, repo, rss_kib, LocalApi};
use flotilla_operator::crd::{ClusterPhase, ComputeCluster, ComputeJob, JobPhase};
use flotilla_testenv::kubelet::{ImageMapping, KubeletConfig, ProcessKubelet};
use k8s_openapi::api::core::v1::Pod;
use kube::{api::PostParams, Api};

const TIMED: usize = 5;
const JOBS: usize = 100;

/// Polls `check` every 2 ms for up to `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn job_on(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

fn summary(name: &str, mut times: Vec<Duration>, target: Duration) {
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!(
        "{name:<30} median {:>7.1} ms   worst {:>7.1} ms   target <= {} ms   {}",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        target.as_millis(),
        if worst <= target { "met" } else { "MISSED" }
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("the program lives in a target directory")?
        .to_owned();
    for binary in ["flotilla-operator", "flotilla"] {
        if !bin_dir.join(binary).exists() {
            bail!("build {binary} next to this program: scripts/bench-operator.sh");
        }
    }
    let repo = repo();

    let LocalApi {
        api,
        dir,
        kubeconfig,
    } = LocalApi::start().await?;
    let client = api.client().await?;
    let kubelet = ProcessKubelet::start(
        client.clone(),
        KubeletConfig::new(
            vec![ImageMapping::new("flotilla", &bin_dir).with_entrypoint(bin_dir.join("flotilla"))],
            dir.path().join("pods"),
        ),
    )
    .await?;
    let mut operator = Command::new(bin_dir.join("flotilla-operator"))
        .args(["run", "--http-bind", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the operator")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let jobs: Api<ComputeJob> = Api::namespaced(client.clone(), "default");
    let clusters: Api<ComputeCluster> = Api::namespaced(client.clone(), "default");

    // A running cluster for the jobs that name one.
    kubectl_apply(
        &kubeconfig,
        &std::fs::read_to_string(repo.join("examples/minimal-cluster.yaml"))?,
    )?;
    until("the cluster running", Duration::from_secs(60), || async {
        clusters
            .get_opt("minimal")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status?.phase)
            == Some(ClusterPhase::Running)
    })
    .await?;

    // Apply → driver running.
    let mut times = Vec::new();
    for i in 0..TIMED {
        let name = format!("timed-{i}");
        let start = Instant::now();
        kubectl_apply(
            &kubeconfig,
            &job_on(&name, "  clusterRef: {name: minimal}\n  args: [example, sleep, --tasks, '1', --millis, '500']\n"),
        )?;
        until("the driver running", Duration::from_secs(30), || async {
            let pod = pods
                .get_opt(&format!("{name}-driver-1"))
                .await
                .ok()
                .flatten();
            matches!(
                pod.and_then(|p| p.status?.phase).as_deref(),
                Some("Running" | "Succeeded")
            )
        })
        .await?;
        times.push(start.elapsed());
    }
    summary("job_apply_to_driver_running", times, Duration::from_secs(1));

    // A trivial job with its own 2-worker cluster → Succeeded.
    let mut times = Vec::new();
    for i in 0..TIMED {
        let name = format!("own-{i}");
        let start = Instant::now();
        kubectl_apply(
            &kubeconfig,
            &job_on(&name, "  cluster: {image: 'flotilla:latest', workerGroups: [{name: w, replicas: 2}]}\n  args: [example, square]\n"),
        )?;
        until("the job succeeded", Duration::from_secs(60), || async {
            jobs.get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|j| j.status?.phase)
                == Some(JobPhase::Succeeded)
        })
        .await?;
        times.push(start.elapsed());
    }
    summary(
        "own_cluster_job_to_succeeded",
        times,
        Duration::from_secs(3),
    );

    // Size: 100 finished and 100 running jobs.
    for i in 0..JOBS {
        for (kind, command) in [("done", "[/bin/true]"), ("running", "[/bin/sleep, '3600']")] {
            let object: ComputeJob = serde_yaml::from_str(&job_on(
                &format!("{kind}-{i}"),
                &format!("  clusterRef: {{name: minimal}}\n  entrypoint: {command}\n"),
            ))?;
            jobs.create(&PostParams::default(), &object).await?;
        }
    }
    let start = Instant::now();
    until(
        "100 finished and 100 running jobs",
        Duration::from_secs(300),
        || async {
            let Ok(list) = jobs.list(&Default::default()).await else {
                return false;
            };
            let count = |prefix: &str, phase| {
                list.items
                    .iter()
                    .filter(|j| {
                        j.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with(prefix))
                    })
                    .filter(|j| j.status.as_ref().and_then(|s| s.phase) == Some(phase))
                    .count()
            };
            count("done-", JobPhase::Succeeded) == JOBS
                && count("running-", JobPhase::Running) == JOBS
        },
    )
    .await?;
    let settled = start.elapsed();
    // Steady state: running jobs refresh their progress every 2 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss = rss_kib(operator.id(), "VmRSS:")?;
    let peak = rss_kib(operator.id(), "VmHWM:")?;
    println!(
        "rss_200_jobs                   {:>7.1} MiB (peak {:.1} MiB) after {:.1} s to settle them all",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        settled.as_secs_f64()
    );
    operator.kill()?;
    operator.wait()?;
    kubelet.shutdown().await;
    Ok(())
}
