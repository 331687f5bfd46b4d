//! `flotilla-operator`: the operator's command line.
//!
//! - `flotilla-operator run` reconciles ComputeClusters and ComputeJobs (kubeconfig or in-cluster config), serves
//!   `/metrics`, `/healthz` and `/readyz`, and with `--leader-election` acts only while it holds
//!   the Lease.
//! - `flotilla-operator crd` prints the CRDs.

use std::{io::Write, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flotilla_operator::{
    context::Context,
    controller, job,
    leader::{Leadership, LeaseConfig},
    metrics::Metrics,
};
use futures::FutureExt;

/// The Flotilla Kubernetes operator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile ComputeClusters and ComputeJobs until stopped (SIGTERM or ctrl-c).
    Run(RunArgs),
    /// Print the ComputeCluster and ComputeJob CRDs as YAML (`... crd | kubectl apply -f -`).
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "FLOTILLA_OPERATOR_HTTP_BIND",
        default_value = "127.0.0.1:8080"
    )]
    http_bind: SocketAddr,
    /// Act only while holding the Lease, so that several replicas can run.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "flotilla-operator")]
    lease_name: String,
    /// Namespace of the leader Lease. Default: this pod's namespace, else the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity in the Lease and in Events. Default: the pod name or host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only these namespaces (comma separated). Default: all.
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Prometheus the autoscaler reads when a cluster names none.
    #[arg(long, env = "FLOTILLA_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            let yaml = flotilla_operator::crdgen::render_all()?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
            Ok(())
        }
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(args))
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (kubeconfig or in-cluster config)")?;
    let metrics = Metrics::default();
    // Ready once connected, standbys included: a standby waiting for the Lease is healthy, and a
    // rolling update of a one-replica Deployment must not wait for it to lead.
    metrics.set_ready();
    let listener = tokio::net::TcpListener::bind(args.http_bind)
        .await
        .with_context(|| format!("listening on {}", args.http_bind))?;
    let served = metrics.clone().serve(listener);
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("flotilla-operator-{}", std::process::id()));
    if let Some(url) = &args.prometheus_url {
        tracing::info!(url, "default Prometheus for autoscaling");
    }
    let shutdown = shutdown_signal().shared();

    let work = async {
        let leadership = if args.leader_election {
            let config = LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
                identity: identity.clone(),
                duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
                renew_every: Duration::from_secs(args.lease_duration_seconds.max(2)) / 3,
            };
            tracing::info!(lease = %config.name, namespace = %config.namespace, identity, "waiting for the leader lease");
            let leadership = tokio::select! {
                held = Leadership::acquire(client.clone(), config) => held.context("acquiring the leader lease")?,
                () = shutdown.clone() => return Ok(()),
            };
            tracing::info!("leading");
            metrics.set_leader(true);
            Some(leadership)
        } else {
            metrics.set_leader(true);
            None
        };
        let ctx = Arc::new(Context::new(
            client.clone(),
            metrics.clone(),
            Some(identity.clone()),
        ));
        if let Some(url) = &args.prometheus_url {
            ctx.autoscalers.set_default_url(url.clone());
        }
        let controllers = futures::future::join(
            controller::run(ctx.clone(), &args.namespaces, shutdown.clone()),
            job::run(ctx, &args.namespaces, shutdown.clone()),
        )
        .map(|_| ());
        match &leadership {
            Some(held) => {
                tokio::select! {
                    () = controllers => {}
                    () = held.keep() => {
                        metrics.set_leader(false);
                        anyhow::bail!("lost the leader lease; stopping so a restart waits for it again");
                    }
                }
            }
            None => controllers.await,
        }
        if let Some(held) = leadership {
            held.release().await;
        }
        Ok(())
    };
    tokio::select! {
        result = work => result,
        served = served => served.with_context(|| format!("serving HTTP on {}", args.http_bind)),
    }
}
