//! What the operator's end-to-end suites share: where the repository and the built binaries
//! are, and waiting on a condition.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of the built binaries, checked to hold the runtime's.
pub fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_flotilla-operator"))
        .parent()
        .expect("binaries live in a directory")
        .to_owned();
    assert!(
        dir.join("flotilla").exists(),
        "{} has no `flotilla` binary: build it first with `cargo build -p flotilla --bin flotilla` \
         (cargo test --workspace does)",
        dir.display()
    );
    dir
}

/// Polls `check` every 50 ms until it yields a value, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod kube;
