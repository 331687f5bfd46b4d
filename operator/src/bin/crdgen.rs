//! `crdgen`: prints the CRDs as YAML, or writes one file per CRD with `--out-dir`
//! (`cargo run -p flotilla-operator --bin crdgen -- --out-dir crds`).

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::Parser;

/// Generate the Flotilla CRDs from their Rust types.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Write `computecluster.yaml` and `computejob.yaml` into this directory instead of printing.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.out_dir {
        Some(dir) => flotilla_operator::crdgen::write_all(&dir)?,
        None => {
            let yaml = flotilla_operator::crdgen::render_all()?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
        }
    }
    Ok(())
}
