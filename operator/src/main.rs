//! `flotilla-operator`: the operator's command line. `flotilla-operator crd` prints the CRDs.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Flotilla Kubernetes operator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ComputeCluster and ComputeJob CRDs as YAML (`... crd | kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            let yaml = flotilla_operator::crdgen::render_all()?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
        }
    }
    Ok(())
}
