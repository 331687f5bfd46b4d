//! The autoscaler's speed and cost, on the local Kubernetes with a real Prometheus:
//! - `burst_to_first_pod`: from a burst of tasks submitted by a real driver to the first new
//!   worker pod created, and `burst_to_registered`: to the new workers registered at the head
//!   (target: at most one poll interval + one scrape interval + 1 s);
//! - `empty_to_scaled_down`: from the queue emptying to the group back at its minimum, its
//!   workers drained (the scale-down window is part of it, and printed);
//! - `cpu_100_clusters` and `rss_100_clusters`: the operator's CPU (share of one core) and memory
//!   with 100 autoscaled clusters polling Prometheus every 5 s (target ≤ 5 %, ≤ 100 MiB).
//!
//! Run with `scripts/bench-autoscaler.sh [latency|cost]` (it builds the release binaries next to
//! this program; an argument runs one part only).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use common::{kubectl_apply, rss_kib, LocalApi};
use flotilla::builtins::sleep_then;
use flotilla_testenv::kubelet::{ImageMapping, KubeletConfig, ProcessKubelet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{api::ListParams, Api, Client};

const POLL_SECONDS: u64 = 2;
const SCRAPE_SECONDS: u64 = 1;
const DOWN_WINDOW_SECONDS: u64 = 5;
const CLUSTERS: usize = 100;
const MEASURE: Duration = Duration::from_secs(60);

/// A child process stopped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn manifest(name: &str, poll: u64) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeCluster\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  image: flotilla:latest\n  workerGroups:\n\
         \x20 - {{name: default, replicas: 1, minReplicas: 1, maxReplicas: 4, slots: 1}}\n\
         \x20 autoscaling:\n    pollIntervalSeconds: {poll}\n\
         \x20   scaleDown: {{stabilizationWindowSeconds: {DOWN_WINDOW_SECONDS}, maxStepPercent: 100}}\n"
    )
}

/// Makes Prometheus (started by [`prometheus`] on `dir`) scrape `targets`.
fn scrape(dir: &Path, targets: &[String]) -> anyhow::Result<()> {
    let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let tmp = dir.join("targets.json.tmp");
    std::fs::write(&tmp, format!("[{{\"targets\": [{}]}}]", quoted.join(", ")))?;
    std::fs::rename(tmp, dir.join("targets.json"))?;
    Ok(())
}

/// Starts Prometheus scraping `targets` every second (more through [`scrape`]); returns it and
/// its URL.
fn prometheus(dir: &Path, targets: &[String]) -> anyhow::Result<(Guard, String)> {
    let port = free_port()?;
    scrape(dir, targets)?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: {SCRAPE_SECONDS}s, scrape_timeout: 900ms}}\n\
             scrape_configs:\n- job_name: heads\n  file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n",
            dir.join("targets.json").display()
        ),
    )?;
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting /usr/bin/prometheus")?;
    Ok((Guard(child), format!("http://127.0.0.1:{port}")))
}

fn operator(bin: &Path, kubeconfig: &Path, url: &str) -> anyhow::Result<Guard> {
    let child = Command::new(bin)
        .args(["run", "--http-bind", "127.0.0.1:0", "--prometheus-url", url])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the operator")?;
    Ok(Guard(child))
}

async fn wait<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > limit {
            bail!("no {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn live_workers(pods: &Api<Pod>, cluster: &str) -> Vec<Pod> {
    let selector = format!("flotilla.dev/cluster={cluster},flotilla.dev/role=worker");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn head_of(client: &Client, cluster: &str) -> Option<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ip = pods
        .get_opt(&format!("{cluster}-head"))
        .await
        .ok()??
        .status?
        .pod_ip?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = secrets.get_opt(&format!("{cluster}-token")).await.ok()??;
    let token = String::from_utf8(secret.data?.get("token")?.0.clone()).ok()?;
    Some((ip, token))
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/pid/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports them in USER_HZ ticks, 100 a second on every architecture it runs on.
    Ok(ticks as f64 / 100.0)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(rss_kib(pid, "VmRSS:")? as f64 / 1024.0)
}

/// The directory of the release binaries: next to this program, or `FLOTILLA_BENCH_BIN_DIR`.
fn release_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOTILLA_BENCH_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .context("the release directory")?
        .to_owned();
    for bin in ["flotilla-operator", "flotilla"] {
        if !dir.join(bin).exists() {
            bail!("build {bin} next to this program: scripts/bench-autoscaler.sh");
        }
    }
    Ok(dir)
}

/// Burst → first pod, → registered workers, and queue empty → scaled down, on one cluster whose
/// pods run as local processes.
async fn latency(bin_dir: &Path) -> anyhow::Result<()> {
    let LocalApi {
        api,
        dir,
        kubeconfig,
    } = LocalApi::start().await?;
    let client = api.client().await?;
    let _kubelet = ProcessKubelet::start(
        client.clone(),
        KubeletConfig {
            node_name: "local".into(),
            images: vec![ImageMapping {
                image: "flotilla".into(),
                bin_dir: bin_dir.to_owned(),
                entrypoint: Some(bin_dir.join("flotilla")),
            }],
            log_dir: dir.path().join("pods"),
            restart_backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            schedule: true,
        },
    )
    .await?;
    let (_prometheus, url) = prometheus(dir.path(), &[])?;
    let _operator = operator(&bin_dir.join("flotilla-operator"), &kubeconfig, &url)?;
    kubectl_apply(&kubeconfig, &manifest("bench", POLL_SECONDS))?;
    let (ip, token) = wait("head", Duration::from_secs(60), || {
        head_of(&client, "bench")
    })
    .await?;
    scrape(dir.path(), &[format!("{ip}:7401")])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let driver = flotilla::Runtime::connect(&format!("{ip}:7400"), Some(&token)).await?;
    wait("one registered worker", Duration::from_secs(60), || async {
        let status = driver.status().await.ok()?;
        (status.workers.len() == 1).then_some(())
    })
    .await?;
    // Let the autoscaler read a few times at rest, so the burst lands at a random point of its
    // poll interval, as in real use.
    tokio::time::sleep(Duration::from_secs(POLL_SECONDS * 2 + 1)).await;

    let burst = Instant::now();
    let tasks: Vec<_> = (0..16u64)
        .map(|i| sleep_then.remote(&driver, 4000, i))
        .collect();
    wait("a new worker pod", Duration::from_secs(60), || async {
        (live_workers(&pods, "bench").await.len() > 1).then_some(())
    })
    .await?;
    let first_pod = burst.elapsed();
    wait("4 registered workers", Duration::from_secs(60), || async {
        let status = driver.status().await.ok()?;
        (status.workers.len() == 4).then_some(())
    })
    .await?;
    let registered = burst.elapsed();
    let results = driver.get_all(&tasks).await?;
    if results != (0..16).collect::<Vec<u64>>() {
        bail!("wrong results: {results:?}");
    }
    let empty = Instant::now();
    wait(
        "the group back at 1 worker",
        Duration::from_secs(120),
        || async {
            let status = driver.status().await.ok()?;
            (live_workers(&pods, "bench").await.len() == 1 && status.workers.len() == 1)
                .then_some(())
        },
    )
    .await?;
    let scaled_down = empty.elapsed();
    let target = Duration::from_secs(POLL_SECONDS + SCRAPE_SECONDS + 1);
    let verdict = |d: Duration| if d <= target { "met" } else { "MISSED" };
    println!(
        "burst_to_first_pod      {:>7.0} ms   target <= {} ms (poll {POLL_SECONDS} s + scrape {SCRAPE_SECONDS} s + 1 s)   {}",
        first_pod.as_secs_f64() * 1e3,
        target.as_millis(),
        verdict(first_pod)
    );
    println!(
        "burst_to_registered     {:>7.0} ms   target <= {} ms   {}",
        registered.as_secs_f64() * 1e3,
        target.as_millis(),
        verdict(registered)
    );
    println!(
        "empty_to_scaled_down    {:>7.0} ms   (scale-down window {DOWN_WINDOW_SECONDS} s, then 3 drains)",
        scaled_down.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Serves a synthetic head exposition for `clusters` clusters on 127.0.0.1 (the demand of each
/// cluster changes every minute), so Prometheus has real series to answer 100 loops with.
async fn exporter(clusters: usize) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let started = Instant::now();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let minute = started.elapsed().as_secs() / 60;
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let mut body = String::new();
                for i in 0..clusters {
                    let demand = (i as u64 + minute) % 5;
                    body.push_str(&format!(
                        "flotilla_demand_slots{{cluster=\"c{i}\",namespace=\"default\",group=\"\"}} {demand}\n\
                         flotilla_group_busy_workers{{cluster=\"c{i}\",namespace=\"default\",group=\"default\"}} 0\n"
                    ));
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(address)
}

/// CPU and memory of the operator with 100 autoscaled clusters polling every 5 s.
async fn cost(bin_dir: &Path) -> anyhow::Result<()> {
    let LocalApi {
        api: _api,
        dir,
        kubeconfig,
    } = LocalApi::start().await?;
    let target = exporter(CLUSTERS).await?;
    let (_prometheus, url) = prometheus(dir.path(), &[target])?;
    let all: String = (0..CLUSTERS)
        .map(|i| format!("---\n{}", manifest(&format!("c{i}"), 5)))
        .collect();
    kubectl_apply(&kubeconfig, &all)?;
    let operator = operator(&bin_dir.join("flotilla-operator"), &kubeconfig, &url)?;
    let pid = operator.0.id();
    // Settle: every cluster created, its loop started and reading.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = cpu_seconds(pid)?;
    let start = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let used = cpu_seconds(pid)? - before;
    let share = used / start.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(pid)?;
    println!(
        "cpu_100_clusters        {share:>7.2} % of one core over {} s   target <= 5 %   {}",
        MEASURE.as_secs(),
        if share <= 5.0 { "met" } else { "MISSED" }
    );
    println!(
        "rss_100_clusters        {rss:>7.1} MiB   target <= 100 MiB   {}",
        if rss <= 100.0 { "met" } else { "MISSED" }
    );
    drop(operator);
    Ok(())
}

/// `autoscale_bench [latency|cost]`: both parts, or one.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin_dir = release_dir()?;
    let part = std::env::args().nth(1);
    if part.as_deref() != Some("cost") {
        latency(&bin_dir).await?;
    }
    if part.as_deref() != Some("latency") {
        cost(&bin_dir).await?;
    }
    Ok(())
}
