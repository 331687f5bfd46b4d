//! A progress bar for computations a person waits on: tasks done of the total, per stage, on
//! standard error when it is a terminal (as Dask's `ProgressBar`), and nothing otherwise.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    driver::{object_ref::ObjectRef, Runtime},
    error::Result,
};

/// Whether bars are drawn: standard error is a terminal and `FLOTILLA_PROGRESS` is not `0`.
fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var("FLOTILLA_PROGRESS").map_or(true, |v| v != "0")
}

/// Waits until every one of `refs` is ready (or failed), drawing a bar named `stage` while it
/// takes longer than a moment. Errors surface when the values are read, not here.
pub async fn watch<T>(rt: &Runtime, stage: &str, refs: &[ObjectRef<T>]) -> Result<()> {
    if !enabled() || refs.is_empty() {
        return Ok(());
    }
    let bar = ProgressBar::hidden();
    bar.set_length(refs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} tasks {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    let mut pending: Vec<ObjectRef<T>> = refs.to_vec();
    let mut shown = false;
    let started = std::time::Instant::now();
    while !pending.is_empty() {
        let (ready, rest) = rt
            .wait(pending, 1, Some(Duration::from_millis(100)))
            .await?;
        bar.inc(ready.len() as u64);
        pending = rest;
        // A computation done within half a second draws nothing.
        if !shown && started.elapsed() > Duration::from_millis(500) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
    }
    if shown {
        bar.finish();
    }
    Ok(())
}
