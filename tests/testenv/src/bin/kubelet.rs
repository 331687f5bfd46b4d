//! `flotilla-kubelet`: the process kubelet as a program. It runs the pods bound to its node (and,
//! unless `--no-schedule`, binds unscheduled pods to it) as local processes until SIGTERM or
//! Ctrl-C, then stops them all.
//!
//! ```text
//! flotilla-kubelet --kubeconfig kubeconfig.yaml --image flotilla=target/debug \
//!     --image busybox=/bin --node local --log-dir logs
//! ```
//!
//! `--image NAME=BIN_DIR[=ENTRYPOINT]` says which directory of binaries an image stands for,
//! and optionally the program run when a container has no `command`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use flotilla_testenv::kubelet::{ImageMapping, KubeletConfig, ProcessKubelet};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-kubelet",
    about = "Runs Kubernetes pods as local processes"
)]
struct Args {
    /// Kubeconfig of the API server; without it, the usual discovery (KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use.
    #[arg(long)]
    context: Option<String>,
    /// An image and the local directory of binaries it stands for: NAME=BIN_DIR[=ENTRYPOINT].
    #[arg(long = "image", value_parser = parse_image, required = true)]
    images: Vec<ImageMapping>,
    /// Name of this node.
    #[arg(long, default_value = "local")]
    node: String,
    /// Where container logs go.
    #[arg(long, default_value = "kubelet-logs")]
    log_dir: PathBuf,
    /// Do not bind unscheduled pods to this node.
    #[arg(long)]
    no_schedule: bool,
    /// Base of the crash-loop back-off, in milliseconds.
    #[arg(long, default_value_t = 100)]
    backoff_base_ms: u64,
    /// Cap of the crash-loop back-off, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    backoff_cap_ms: u64,
}

fn parse_image(value: &str) -> Result<ImageMapping, String> {
    let mut parts = value.splitn(3, '=');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(image), Some(bin_dir), entrypoint) if !image.is_empty() && !bin_dir.is_empty() => {
            let mapping = ImageMapping::new(image, bin_dir);
            Ok(match entrypoint {
                Some(entrypoint) => mapping.with_entrypoint(entrypoint),
                None => mapping,
            })
        }
        _ => Err(format!("expected NAME=BIN_DIR[=ENTRYPOINT], got {value:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => Config::infer().await?,
    };
    let client = Client::try_from(config)?;
    let kubelet = ProcessKubelet::start(
        client,
        KubeletConfig {
            node_name: args.node,
            images: args.images,
            log_dir: args.log_dir,
            restart_backoff: (
                Duration::from_millis(args.backoff_base_ms),
                Duration::from_millis(args.backoff_cap_ms),
            ),
            schedule: !args.no_schedule,
        },
    )
    .await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    tracing::info!("stopping all pods");
    kubelet.shutdown().await;
    Ok(())
}
