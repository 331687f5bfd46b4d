//! The head's Prometheus metrics: the cluster's queue, slots, workers, actors and objects, taken
//! from the scheduler at each scrape, runs by task name, and a histogram of task run times
//! observed as results arrive. Every series carries the `cluster` and `namespace` labels.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use flotilla_core::{Snapshot, WorkerView};
use prometheus::{
    core::Collector, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use super::core::RunsByName;
use crate::metrics::register;

/// Series of the autoscaler's signal kept at 0 after their work is gone, per metric, before the
/// ones at 0 are dropped.
const KEPT_SERIES: usize = 2 * flotilla_core::scheduler::MAX_DEMAND_SHAPES;

/// The head's registry and the series in it.
pub struct HeadMetrics {
    registry: Registry,
    /// Serializes scrapes: each sets gauges and advances counters to the scheduler's values.
    scrape: Mutex<()>,
    tasks_pending: IntGauge,
    tasks_waiting: IntGauge,
    tasks_running: IntGauge,
    tasks_finished: IntCounter,
    tasks_failed: IntCounter,
    tasks_retried: IntCounter,
    slots: IntGaugeVec,
    workers: IntGaugeVec,
    actors: IntGaugeVec,
    store_bytes: IntGaugeVec,
    desired_workers: IntGauge,
    objects: IntGauge,
    drivers: IntGauge,
    group_workers: IntGaugeVec,
    group_slots: IntGaugeVec,
    demand_slots: IntGaugeVec,
    pending_slots: IntGaugeVec,
    group_busy: IntGaugeVec,
    task_runs: IntCounterVec,
    task_seconds: Histogram,
    job_tasks: IntGaugeVec,
}

impl HeadMetrics {
    /// A registry whose series carry `cluster` and `namespace`.
    pub fn new(cluster: &str, namespace: &str) -> Self {
        let labels = HashMap::from([
            ("cluster".to_string(), cluster.to_string()),
            ("namespace".to_string(), namespace.to_string()),
        ]);
        let registry = Registry::new_custom(None, Some(labels))
            .expect("cluster and namespace are valid label names");
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                IntGauge::new(name, help).expect("a valid metric name"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("a valid metric name"),
            )
        };
        let gauges = |name: &str, help: &str, label: &str| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric name"),
            )
        };
        HeadMetrics {
            tasks_pending: gauge(
                "flotilla_tasks_pending",
                "Tasks ready to run, waiting for a free slot.",
            ),
            tasks_waiting: gauge(
                "flotilla_tasks_waiting",
                "Tasks waiting for their arguments.",
            ),
            tasks_running: gauge("flotilla_tasks_running", "Tasks running now."),
            tasks_finished: counter(
                "flotilla_tasks_finished_total",
                "Tasks finished successfully.",
            ),
            tasks_failed: counter("flotilla_tasks_failed_total", "Tasks failed for good."),
            tasks_retried: counter(
                "flotilla_tasks_retried_total",
                "Tasks retried after a worker failure.",
            ),
            slots: gauges("flotilla_slots", "Task slots across live workers.", "state"),
            workers: gauges("flotilla_workers", "Workers by state.", "state"),
            actors: gauges("flotilla_actors", "Actors by state.", "state"),
            store_bytes: gauges(
                "flotilla_object_store_bytes",
                "Object store bytes across workers.",
                "location",
            ),
            desired_workers: gauge(
                "flotilla_desired_workers",
                "The head's estimate of workers needed.",
            ),
            objects: gauge("flotilla_objects", "Objects tracked by the head."),
            drivers: gauge("flotilla_drivers", "Connected driver sessions."),
            group_workers: gauges(
                "flotilla_group_workers",
                "Registered workers per group.",
                "group",
            ),
            group_slots: gauges("flotilla_group_slots", "Task slots per group.", "group"),
            demand_slots: gauges(
                "flotilla_demand_slots",
                "Task slots that running tasks and live actors take, by their worker's group.",
                "group",
            ),
            pending_slots: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flotilla_demand_pending_slots",
                        "Task slots of pending tasks, by what one task asks: its slots and its \
                         custom resources (NAME=AMOUNT,...; \"\" for none).",
                    ),
                    &["slots", "resources"],
                )
                .expect("a valid metric name"),
            ),
            group_busy: gauges(
                "flotilla_group_busy_workers",
                "Workers running something, by group.",
                "group",
            ),
            task_runs: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "flotilla_task_runs_total",
                        "Task runs by task name and outcome.",
                    ),
                    &["task", "outcome"],
                )
                .expect("a valid metric name"),
            ),
            task_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flotilla_task_duration_seconds",
                        "How long tasks ran on their workers.",
                    )
                    .buckets(crate::metrics::RUN_BUCKETS.to_vec()),
                )
                .expect("valid buckets"),
            ),
            job_tasks: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flotilla_job_tasks",
                        "Tasks of each job the head knows (at most 64 jobs), by state: submitted, \
                         finished, failed (cumulative) and running (waiting, queued or running now).",
                    ),
                    &["job", "state"],
                )
                .expect("a valid metric name"),
            ),
            registry,
            scrape: Mutex::new(()),
        }
    }

    /// Records a task's run time on its worker.
    pub fn observe_run(&self, micros: u64) {
        self.task_seconds.observe(micros as f64 / 1e6);
    }

    /// The Prometheus text exposition of the scheduler's state `(snap, workers)` and `runs`.
    pub fn render(&self, snap: &Snapshot, workers: &[WorkerView], runs: &RunsByName) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        let advance = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        set(&self.tasks_pending, snap.tasks_pending);
        set(&self.tasks_waiting, snap.tasks_waiting);
        set(&self.tasks_running, snap.tasks_running);
        advance(&self.tasks_finished, snap.tasks_finished);
        advance(&self.tasks_failed, snap.tasks_failed);
        advance(&self.tasks_retried, snap.tasks_retried);
        for (vec, series) in [
            (
                &self.slots,
                &[("busy", snap.slots_busy), ("free", snap.slots_free)][..],
            ),
            (
                &self.workers,
                &[
                    ("idle", snap.workers_idle),
                    ("busy", snap.workers_busy),
                    ("draining", snap.workers_draining),
                ][..],
            ),
            (
                &self.actors,
                &[
                    ("alive", snap.actors_alive),
                    ("restarting", snap.actors_restarting),
                    ("dead", snap.actors_dead),
                ][..],
            ),
            (
                &self.store_bytes,
                &[
                    ("memory", snap.store_memory_bytes),
                    ("spilled", snap.store_spilled_bytes),
                ][..],
            ),
        ] {
            for (label, value) in series {
                set(&vec.with_label_values(&[label]), *value);
            }
        }
        set(&self.desired_workers, snap.desired_workers);
        set(&self.objects, snap.objects);
        set(&self.drivers, snap.sessions);
        // Groups come and go with their workers: only the current ones are shown.
        self.group_workers.reset();
        self.group_slots.reset();
        for w in workers {
            self.group_workers
                .with_label_values(&[w.group.as_str()])
                .inc();
            self.group_slots
                .with_label_values(&[w.group.as_str()])
                .add(i64::from(w.slots));
        }
        // The autoscaler's signal. A series once shown stays, at 0 when it has no work: a
        // series that vanished while Prometheus was down would otherwise keep its last value
        // there for the whole lookback window. Past a bound the ones at 0 go.
        type Labels = BTreeMap<&'static str, String>;
        let shapes: BTreeMap<Labels, u64> = snap
            .pending_by_shape
            .iter()
            .map(|((slots, resources), v)| {
                let labels = [
                    ("slots", slots.to_string()),
                    ("resources", resources.clone()),
                ];
                (labels.into(), *v)
            })
            .collect();
        let by_group = |values: &BTreeMap<String, u64>| -> BTreeMap<Labels, u64> {
            values
                .iter()
                .map(|(g, v)| ([("group", g.clone())].into(), *v))
                .collect()
        };
        for (vec, values) in [
            (&self.demand_slots, by_group(&snap.demand_by_group)),
            (&self.pending_slots, shapes),
            (&self.group_busy, by_group(&snap.busy_by_group)),
        ] {
            let mut shown: Vec<Labels> = Vec::new();
            for family in vec.collect() {
                for metric in family.get_metric() {
                    let labels = metric.get_label().iter().filter_map(|l| {
                        let name = ["group", "slots", "resources"]
                            .into_iter()
                            .find(|n| *n == l.name())?;
                        Some((name, l.value().to_owned()))
                    });
                    shown.push(labels.collect());
                }
            }
            let with = |labels: &Labels| {
                let labels: HashMap<&str, &str> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                vec.with(&labels)
            };
            if shown.len() > KEPT_SERIES {
                vec.reset();
            } else {
                for labels in shown.iter().filter(|l| !values.contains_key(*l)) {
                    with(labels).set(0);
                }
            }
            for (labels, value) in &values {
                set(&with(labels), *value);
            }
        }
        // Jobs the head forgot are gone from the series too, so the label set stays bounded.
        self.job_tasks.reset();
        for job in &snap.jobs {
            for (state, value) in [
                ("submitted", job.tasks_submitted),
                ("finished", job.tasks_finished),
                ("failed", job.tasks_failed),
                ("running", job.tasks_live),
            ] {
                set(
                    &self.job_tasks.with_label_values(&[job.job.as_str(), state]),
                    value,
                );
            }
        }
        for (task, finished, failed) in runs {
            advance(
                &self
                    .task_runs
                    .with_label_values(&[task.as_str(), "finished"]),
                *finished,
            );
            advance(
                &self.task_runs.with_label_values(&[task.as_str(), "failed"]),
                *failed,
            );
        }
        crate::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::JobView;

    use super::*;

    #[test]
    fn jobs_show_per_job_task_counts_and_forgotten_jobs_go() {
        let metrics = HeadMetrics::new("c", "ns");
        let job = |name: &str| JobView {
            job: name.to_owned(),
            tasks_submitted: 4,
            tasks_finished: 3,
            tasks_failed: 1,
            tasks_live: 0,
            drivers: 1,
        };
        let snap = Snapshot {
            jobs: vec![job("ns/a-1"), job("ns/b-2")],
            ..Snapshot::default()
        };
        let text = metrics.render(&snap, &[], &Vec::new());
        // The registry's own labels (cluster, namespace) follow in no fixed order.
        for (state, value) in [
            ("submitted", 4),
            ("finished", 3),
            ("failed", 1),
            ("running", 0),
        ] {
            let series = format!(r#"flotilla_job_tasks{{job="ns/a-1",state="{state}","#);
            assert!(
                text.lines().any(|l| l.starts_with(&series)
                    && l.contains(r#"cluster="c""#)
                    && l.ends_with(&format!("}} {value}"))),
                "{series} {value} missing from\n{text}"
            );
        }
        let snap = Snapshot {
            jobs: vec![job("ns/b-2")],
            ..Snapshot::default()
        };
        let text = metrics.render(&snap, &[], &Vec::new());
        assert!(!text.contains("ns/a-1"), "{text}");
        assert!(text.contains("ns/b-2"));
    }

    #[test]
    fn pending_demand_shows_by_shape_and_stays_at_zero_when_gone() {
        let metrics = HeadMetrics::new("c", "ns");
        let line = |text: &str, series: &str, value: u64| {
            text.lines().any(|l| {
                l.starts_with(series)
                    && l.contains(r#"slots="2""#)
                    && l.contains(r#"resources="gpu=1""#)
                    && l.ends_with(&format!("}} {value}"))
            })
        };
        let snap = Snapshot {
            pending_by_shape: [((2, "gpu=1".to_owned()), 6)].into(),
            ..Snapshot::default()
        };
        let text = metrics.render(&snap, &[], &Vec::new());
        assert!(line(&text, "flotilla_demand_pending_slots{", 6), "{text}");
        let text = metrics.render(&Snapshot::default(), &[], &Vec::new());
        assert!(line(&text, "flotilla_demand_pending_slots{", 0), "{text}");
    }
}
