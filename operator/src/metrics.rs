//! The operator's own metrics, in the Prometheus text format, and its HTTP endpoints:
//! `/metrics`, `/healthz` (the process serves) and `/readyz` (it reached the API server; a
//! standby waiting for the leader Lease is ready too, and `flotilla_operator_leader` says which
//! replica acts).
//!
//! Series:
//! - `flotilla_operator_reconcile_total{kind, result="success"|"error"}`
//! - `flotilla_operator_reconcile_errors_total{kind, error}`: failures by error label
//! - `flotilla_operator_reconcile_duration_seconds{kind}`: a histogram
//! - `flotilla_operator_leader`: 1 while this replica holds the lease
//! - `flotilla_operator_drains_total{result="drained"|"timeout"|"error"}`

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};

/// Upper bounds of the reconcile duration buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Series {
    reconciles: BTreeMap<(&'static str, &'static str), u64>,
    errors: BTreeMap<(&'static str, String), u64>,
    durations: BTreeMap<&'static str, Histogram>,
    drains: BTreeMap<&'static str, u64>,
}

/// The operator's counters; cheap to clone and share.
#[derive(Clone, Default)]
pub struct Metrics {
    series: Arc<Mutex<Series>>,
    leader: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
}

impl Metrics {
    /// Counts one reconcile of `kind` that took `elapsed`; `error` is the failure label, if any.
    pub fn reconciled(&self, kind: &'static str, elapsed: Duration, error: Option<&str>) {
        let mut series = self.lock();
        let result = if error.is_some() { "error" } else { "success" };
        *series.reconciles.entry((kind, result)).or_default() += 1;
        if let Some(label) = error {
            *series.errors.entry((kind, label.to_owned())).or_default() += 1;
        }
        let histogram = series.durations.entry(kind).or_default();
        if histogram.counts.is_empty() {
            histogram.counts = vec![0; BUCKETS.len()];
        }
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// Counts one finished drain: `drained`, `timeout` or `error`.
    pub fn drained(&self, result: &'static str) {
        *self.lock().drains.entry(result).or_default() += 1;
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Marks the operator ready (it reached the API server).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // A panic elsewhere while holding the lock leaves plain counters behind; keep counting.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let series = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP flotilla_operator_reconcile_total Reconciles run, by kind and result."
        );
        let _ = writeln!(out, "# TYPE flotilla_operator_reconcile_total counter");
        for ((kind, result), n) in &series.reconciles {
            let _ = writeln!(
                out,
                "flotilla_operator_reconcile_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_operator_reconcile_errors_total Failed reconciles, by kind and error."
        );
        let _ = writeln!(
            out,
            "# TYPE flotilla_operator_reconcile_errors_total counter"
        );
        for ((kind, error), n) in &series.errors {
            let _ = writeln!(
                out,
                "flotilla_operator_reconcile_errors_total{{kind=\"{kind}\",error=\"{error}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_operator_reconcile_duration_seconds Time one reconcile took."
        );
        let _ = writeln!(
            out,
            "# TYPE flotilla_operator_reconcile_duration_seconds histogram"
        );
        for (kind, h) in &series.durations {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(out, "flotilla_operator_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "flotilla_operator_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(
                out,
                "flotilla_operator_reconcile_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "flotilla_operator_reconcile_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_operator_drains_total Worker drains finished, by result."
        );
        let _ = writeln!(out, "# TYPE flotilla_operator_drains_total counter");
        for (result, n) in &series.drains {
            let _ = writeln!(
                out,
                "flotilla_operator_drains_total{{result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_operator_leader Whether this replica holds the leader lease."
        );
        let _ = writeln!(out, "# TYPE flotilla_operator_leader gauge");
        let _ = writeln!(
            out,
            "flotilla_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let app = Router::new()
            .route(
                "/metrics",
                get(|State(m): State<Metrics>| async move { m.render() }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|State(m): State<Metrics>| async move {
                    if m.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }),
            )
            .with_state(self);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app).await
    }
}
