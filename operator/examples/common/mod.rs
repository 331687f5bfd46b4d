//! What the operator's benchmark programs share: a fake API server with the CRDs installed,
//! `kubectl apply` of a manifest and a process's memory.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};
use flotilla_testenv::apiserver::FakeApiServer;

/// A fake API server with this repository's CRDs applied, and a kubeconfig for it in a
/// temporary directory (kept as long as this is).
pub struct LocalApi {
    pub api: FakeApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl LocalApi {
    pub async fn start() -> anyhow::Result<Self> {
        let api = FakeApiServer::start().await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let crds = Command::new("kubectl")
            .args(["apply", "-f"])
            .arg(repo().join("crds"))
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .status()?;
        if !crds.success() {
            bail!("kubectl apply -f crds/ failed");
        }
        Ok(Self {
            api,
            dir,
            kubeconfig,
        })
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl apply -f -` of `yaml`.
pub fn kubectl_apply(kubeconfig: &Path, yaml: &str) -> anyhow::Result<()> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(yaml.as_bytes())?;
    if !child.wait()?.success() {
        bail!("kubectl apply failed");
    }
    Ok(())
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`) in KiB.
pub fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}
