//! `flotilla-fake-apiserver`: the fake Kubernetes API server as a program. It serves on
//! 127.0.0.1 until SIGTERM or Ctrl-C and prints its URL.
//!
//! ```text
//! flotilla-fake-apiserver --bind 127.0.0.1:6443 --kubeconfig-out kubeconfig.yaml
//! KUBECONFIG=kubeconfig.yaml kubectl apply -f crds/
//! ```

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use flotilla_testenv::apiserver::FakeApiServer;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-fake-apiserver",
    about = "A fake Kubernetes API server, in memory, on 127.0.0.1"
)]
struct Args {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Write a kubeconfig for the server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = FakeApiServer::start_on(args.bind).await?;
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    println!("{}", server.url());
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
