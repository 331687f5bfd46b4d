//! What the head's and the workers' `/metrics` share: registering series in a `prometheus`
//! registry and encoding it in the Prometheus text format.

use axum::{http::header, response::IntoResponse};
use prometheus::{core::Collector, Encoder, Registry, TextEncoder};

/// Buckets of task run times, in seconds, for the head's and the workers' histograms: from a
/// no-op to a long batch step.
pub(crate) const RUN_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
    120.0, 600.0,
];

/// Registers `metric` in `registry` and hands it back.
pub(crate) fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each series is registered once, under a distinct name");
    metric
}

/// The text exposition of everything in `registry`.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = Vec::with_capacity(8192);
    // Writing into a Vec cannot fail, and every family was built by this process.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A `/metrics` answer with the exposition's content type.
pub(crate) fn response(text: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text)
}
