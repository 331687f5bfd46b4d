//! The operator's speed and size, against the fake API server (no kubelet: pods are created, not
//! run):
//! - `apply_to_pods`: from starting `kubectl apply` of a new 4-worker cluster to all 5 of its pods
//!   existing (target ≤ 1 s);
//! - `rss_100_clusters`: the operator's resident memory with 100 such clusters (target ≤ 100 MiB).
//!
//! Run with `scripts/bench-operator.sh` (it builds the release operator next to this program).

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use common::{kubectl_apply, rss_kib, LocalApi};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{ListParams, PostParams},
    Api,
};

const CLUSTERS: usize = 100;
const WORKERS: usize = 4;
const TIMED_APPLIES: usize = 10;

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeCluster\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  image: flotilla:latest\n  workerGroups: [{{name: cpu, replicas: {WORKERS}}}]\n"
    )
}

async fn pods_of(pods: &Api<Pod>, cluster: &str) -> anyhow::Result<usize> {
    let selector = format!("flotilla.dev/cluster={cluster}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let operator_bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("flotilla-operator"))
        .filter(|p| p.exists())
        .context("build the operator next to this program: scripts/bench-operator.sh")?;

    let LocalApi {
        api,
        dir: _dir,
        kubeconfig,
    } = LocalApi::start().await?;
    let mut operator = Command::new(&operator_bin)
        .args(["run", "--http-bind", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the operator")?;
    let client = api.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Apply to pods: one cluster at a time, with kubectl, as a user does.
    let mut times = Vec::new();
    for i in 0..TIMED_APPLIES {
        let name = format!("timed-{i}");
        let start = Instant::now();
        kubectl_apply(&kubeconfig, &manifest(&name))?;
        let applied = start.elapsed();
        while pods_of(&pods, &name).await? < WORKERS + 1 {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("cluster {name} did not get its pods in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push((start.elapsed(), applied));
    }
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!(
        "apply_to_pods           median {:>7.1} ms (kubectl itself {:.1} ms)   worst {:>7.1} ms   target <= 1000 ms   {}",
        median.0.as_secs_f64() * 1e3,
        median.1.as_secs_f64() * 1e3,
        worst.0.as_secs_f64() * 1e3,
        if worst.0 <= Duration::from_secs(1) { "met" } else { "MISSED" }
    );

    // Size: the rest of 100 clusters, created through the API at once.
    let clusters: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource {
            group: "flotilla.dev".into(),
            version: "v1alpha1".into(),
            api_version: "flotilla.dev/v1alpha1".into(),
            kind: "ComputeCluster".into(),
            plural: "computeclusters".into(),
        },
    );
    for i in TIMED_APPLIES..CLUSTERS {
        let object: kube::api::DynamicObject =
            serde_yaml::from_str(&manifest(&format!("size-{i}")))?;
        clusters.create(&PostParams::default(), &object).await?;
    }
    let start = Instant::now();
    let expected = CLUSTERS * (WORKERS + 1);
    loop {
        let all = pods.list(&ListParams::default()).await?.items.len();
        if all >= expected {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("only {all} of {expected} pods after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_created = start.elapsed();
    // Let the operator settle into its steady state (status writes, requeues) before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(operator.id(), "VmRSS:")?;
    let peak = rss_kib(operator.id(), "VmHWM:")?;
    println!(
        "pods_for_90_clusters    {:>7.1} ms for {} pods",
        all_created.as_secs_f64() * 1e3,
        (CLUSTERS - TIMED_APPLIES) * (WORKERS + 1)
    );
    println!(
        "rss_100_clusters        {:>7.1} MiB (peak {:.1} MiB)   target <= 100 MiB   {}",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        if peak <= 100 * 1024 { "met" } else { "MISSED" }
    );
    operator.kill()?;
    operator.wait()?;
    Ok(())
}
