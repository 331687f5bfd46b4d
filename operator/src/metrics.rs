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
//! - `flotilla_operator_drains_total{result="drained"|"not_registered"|"timeout"|"no_head"|"error"}`

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use prometheus::{
    core::Collector, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

/// Upper bounds of the reconcile duration buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The operator's metrics; cheap to clone and share.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    durations: HistogramVec,
    drains: IntCounterVec,
    leader: IntGauge,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "flotilla_operator_reconcile_total",
                "Reconciles run, by kind and result.",
            ),
            &["kind", "result"],
        )
        .expect("a valid name, help and labels");
        let errors = IntCounterVec::new(
            Opts::new(
                "flotilla_operator_reconcile_errors_total",
                "Failed reconciles, by kind and error.",
            ),
            &["kind", "error"],
        )
        .expect("a valid name, help and labels");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "flotilla_operator_reconcile_duration_seconds",
                "Time one reconcile took.",
            )
            .buckets(BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("a valid name, help, buckets and labels");
        let drains = IntCounterVec::new(
            Opts::new(
                "flotilla_operator_drains_total",
                "Worker drains finished, by result.",
            ),
            &["result"],
        )
        .expect("a valid name, help and labels");
        let leader = IntGauge::new(
            "flotilla_operator_leader",
            "Whether this replica holds the leader lease.",
        )
        .expect("a valid name and help");
        let registry = Registry::new();
        let collectors: [Box<dyn Collector>; 5] = [
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(durations.clone()),
            Box::new(drains.clone()),
            Box::new(leader.clone()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("each series is registered once, under its own name");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            drains,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Metrics {
    /// Counts one reconcile of `kind` that took `elapsed`; `error` is the failure label, if any.
    pub fn reconciled(&self, kind: &str, elapsed: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles.with_label_values(&[kind, result]).inc();
        if let Some(label) = error {
            self.errors.with_label_values(&[kind, label]).inc();
        }
        self.durations
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one finished drain by how it ended: `drained`, `not_registered`, `timeout`,
    /// `no_head` or `error`.
    pub fn drained(&self, result: &str) {
        self.drains.with_label_values(&[result]).inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Adds another part's series (the autoscaler's) to the registry `/metrics` serves.
    pub fn register(&self, collector: Box<dyn Collector>) {
        self.registry
            .register(collector)
            .expect("each series is registered once, under its own name");
    }

    /// Marks the operator ready (it reached the API server).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the text format encodes every metric family the registry holds")
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
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
        axum::serve(listener, app).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keep_their_names_labels_and_types() {
        let metrics = Metrics::default();
        metrics.reconciled("ComputeCluster", Duration::from_millis(3), None);
        metrics.reconciled(
            "ComputeCluster",
            Duration::from_millis(30),
            Some("invalid_spec"),
        );
        metrics.drained("drained");
        metrics.set_leader(true);
        let text = metrics.render();
        for line in [
            "# TYPE flotilla_operator_reconcile_total counter",
            "flotilla_operator_reconcile_total{kind=\"ComputeCluster\",result=\"success\"} 1",
            "flotilla_operator_reconcile_total{kind=\"ComputeCluster\",result=\"error\"} 1",
            "flotilla_operator_reconcile_errors_total{error=\"invalid_spec\",kind=\"ComputeCluster\"} 1",
            "# TYPE flotilla_operator_reconcile_duration_seconds histogram",
            "flotilla_operator_reconcile_duration_seconds_bucket{kind=\"ComputeCluster\",le=\"0.005\"} 1",
            "flotilla_operator_reconcile_duration_seconds_bucket{kind=\"ComputeCluster\",le=\"+Inf\"} 2",
            "flotilla_operator_reconcile_duration_seconds_count{kind=\"ComputeCluster\"} 2",
            "flotilla_operator_drains_total{result=\"drained\"} 1",
            "# TYPE flotilla_operator_leader gauge",
            "flotilla_operator_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        metrics.set_leader(false);
        assert!(metrics.render().contains("flotilla_operator_leader 0"));
    }
}
