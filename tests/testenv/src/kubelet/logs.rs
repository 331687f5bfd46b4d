//! Container logs, as a kubelet serves them: `GET /containerLogs/{namespace}/{pod}/{container}`
//! with `tailLines`, `follow`, `previous` and `limitBytes` on the kubelet's own port (the
//! Node's `daemonEndpoints.kubeletEndpoint.Port`), which the API server's `pods/{name}/log`
//! proxies to; and a failed container's termination message taken from the end of its output
//! (`terminationMessagePolicy: FallbackToLogsOnError`).
//!
//! Each container's output is one file, appended across restarts (and across pods re-created
//! under the same name); the offsets where each run began tell the current run from the
//! previous one.

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Deserialize;

use super::{process::log_path, Shared};

/// Lines of output a termination message falls back to, as the kubelet takes them.
const FALLBACK_LINES: usize = 80;
/// Bytes a termination message holds at most, as the kubelet's limit.
const FALLBACK_BYTES: usize = 2048;
/// How often a followed log is read again for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// Where each run of each container began in its log file.
#[derive(Debug, Default)]
pub struct LogRuns {
    starts: Mutex<HashMap<PathBuf, Vec<u64>>>,
}

impl LogRuns {
    /// A run of the container logging to `log` starts now.
    pub fn started(&self, log: &Path) {
        let length = std::fs::metadata(log).map_or(0, |m| m.len());
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        let runs = starts.entry(log.to_owned()).or_default();
        runs.push(length);
        // Only the current and the previous run are ever asked for.
        if runs.len() > 2 {
            runs.remove(0);
        }
    }

    /// The byte range of the current run (or the previous one) of the container logging to
    /// `log`; `None` when there is no such run.
    fn range(&self, log: &Path, previous: bool) -> Option<(u64, Option<u64>)> {
        let starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        let runs = starts.get(log)?;
        match (previous, runs.as_slice()) {
            (false, [.., last]) => Some((*last, None)),
            (true, [.., before, last]) => Some((*before, Some(*last))),
            _ => None,
        }
    }

    /// The end of the current run's output, for a termination message: its last 80 lines, at
    /// most 2048 bytes.
    pub fn tail_for_message(&self, log: &Path) -> Option<String> {
        let (from, _) = self.range(log, false)?;
        let bytes = read_range(log, from, None).ok()?;
        let text = tail_lines(&bytes, FALLBACK_LINES);
        let start = text.len().saturating_sub(FALLBACK_BYTES);
        let text = String::from_utf8_lossy(&text[start..]).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

fn read_range(log: &Path, from: u64, to: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(log)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    match to {
        Some(to) => {
            file.take(to.saturating_sub(from)).read_to_end(&mut bytes)?;
        }
        None => {
            file.read_to_end(&mut bytes)?;
        }
    }
    Ok(bytes)
}

/// The last `n` lines of `bytes` (a last line without a newline counts).
fn tail_lines(bytes: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

/// The query of a log request.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    tail_lines: Option<i64>,
    follow: Option<String>,
    previous: Option<String>,
    limit_bytes: Option<usize>,
}

fn flag(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("true" | "1"))
}

/// The kubelet's HTTP routes.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(shared)
}

fn refuse(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let log = log_path(&shared.config.log_dir, &namespace, &pod, &container);
    let previous = flag(query.previous.as_ref());
    let Some((from, to)) = shared.log_runs.range(&log, previous) else {
        return refuse(if previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating")
        });
    };
    let mut bytes = match read_range(&log, from, to) {
        Ok(bytes) => bytes,
        Err(e) => return refuse(format!("cannot read the log of {container:?}: {e}")),
    };
    let read_to = from + bytes.len() as u64;
    if let Some(n) = query.tail_lines.filter(|n| *n >= 0) {
        let tail = tail_lines(&bytes, usize::try_from(n).unwrap_or(usize::MAX));
        bytes = tail.to_vec();
    }
    let limit = query.limit_bytes.unwrap_or(usize::MAX);
    bytes.truncate(limit);
    let follow = flag(query.follow.as_ref()) && !previous && bytes.len() < limit;
    if !follow {
        return bytes.into_response();
    }
    // Following: what is there now, then new output as it comes, until the container stops.
    let stream = futures::stream::unfold(
        (Some(Bytes::from(bytes)), false, read_to),
        move |(first, done, mut offset)| {
            let log = log.clone();
            let shared = Arc::clone(&shared);
            let (namespace, pod, container) = (namespace.clone(), pod.clone(), container.clone());
            async move {
                if let Some(first) = first {
                    return Some((Ok::<_, std::io::Error>(first), (None, false, offset)));
                }
                if done {
                    return None;
                }
                loop {
                    let running = shared
                        .processes
                        .pid_of(&namespace, &pod, Some(&container))
                        .is_some();
                    let new = read_range(&log, offset, None).unwrap_or_default();
                    if !new.is_empty() {
                        offset += new.len() as u64;
                        return Some((Ok(Bytes::from(new)), (None, !running, offset)));
                    }
                    if !running {
                        return None;
                    }
                    tokio::time::sleep(FOLLOW_EVERY).await;
                }
            }
        },
    );
    Body::from_stream(stream).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_count_lines_from_the_end() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn runs_tell_the_current_output_from_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let runs = LogRuns::default();
        assert_eq!(runs.range(&log, false), None);
        runs.started(&log);
        std::fs::write(&log, "first run\nerror: boom\n").unwrap();
        assert_eq!(
            runs.tail_for_message(&log).as_deref(),
            Some("first run\nerror: boom")
        );
        runs.started(&log);
        std::fs::write(&log, "first run\nerror: boom\nsecond\n").unwrap();
        assert_eq!(read_range(&log, 22, None).unwrap(), b"second\n");
        let (from, to) = runs.range(&log, true).unwrap();
        assert_eq!(
            read_range(&log, from, to).unwrap(),
            b"first run\nerror: boom\n"
        );
        assert_eq!(runs.tail_for_message(&log).as_deref(), Some("second"));
    }
}
