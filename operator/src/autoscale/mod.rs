//! The autoscaler: one loop per ComputeCluster with `spec.autoscaling.enabled`, each reading the
//! cluster's demand every `pollIntervalSeconds` ([`source`]), feeding it to one [`policy`] per
//! worker group, and publishing the decision for the reconcile to act on.
//!
//! The loops write nothing to the API server but Events: the reconcile reads the latest
//! [`Decision`] of its cluster ([`Autoscalers::track`]), sizes the groups by it (creating pods, or
//! draining workers the head reports idle first) and writes it to the status
//! (`status.workerGroups[].desiredReplicas`, `status.autoscaler`, the `AutoscalerReady`
//! condition). The spec is never written. When a loop's decision changes it asks for a reconcile
//! of its cluster.
//!
//! Every loop is its own task and every read has a timeout, so one cluster's slow or broken
//! metrics never delay another's. After `fallback.failureThreshold` failed reads in a row the
//! fallback applies (`hold`, `minReplicas`, `maxReplicas`), `AutoscalerReady` turns `False` with
//! the words of the failure, and a Warning Event is recorded; the next good read recovers.

pub mod demand;
pub mod policy;
pub mod source;
pub mod steer;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use futures::channel::mpsc;
use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::runtime::events::EventType;
use prometheus::{
    core::Collector, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
};
use tokio::sync::watch;

use self::{
    demand::{Group, Offer},
    policy::{GroupPolicy, Held, Limits},
    source::{ReadError, Reader, Reading, Source},
};
use crate::{
    context::Context,
    crd::{AutoscalerStatus, FallbackBehavior, ScalingDecision},
};

/// Condition type: the autoscaler reads its metrics.
pub const AUTOSCALER_READY: &str = "AutoscalerReady";
/// How long one read of the metrics may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// A loop that no reconcile has looked at for this long belongs to a cluster that is gone.
const ORPHANED: Duration = Duration::from_secs(900);

/// What a cluster's loop needs to know, from its spec and what the reconcile observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `namespace`/`name` of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub name: String,
    /// The cluster, as the object its Events are about.
    pub reference: ObjectReference,
    /// Where the demand is read; `None` while no head runs and no Prometheus is set.
    pub source: Option<Source>,
    /// Seconds between reads.
    pub poll: Duration,
    /// The groups in spec order, with their limits.
    pub groups: Vec<(String, Limits)>,
    /// What one worker of each group offers.
    pub offers: BTreeMap<String, Offer>,
    /// Failed reads in a row before the fallback applies.
    pub failure_threshold: u32,
    /// What to do without metrics.
    pub fallback: FallbackBehavior,
}

/// The latest decision of a cluster's loop.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Desired workers by group.
    pub sizes: BTreeMap<String, u32>,
    /// When each group's size last changed.
    pub scaled: BTreeMap<String, Time>,
    /// `status.autoscaler`.
    pub status: AutoscalerStatus,
    /// Whether the metrics are read: `(holds, reason, message)`.
    pub ready: (bool, String, String),
    /// Slots of pending tasks no group can run, by what no group offers ([`demand::split`]).
    pub infeasible: BTreeMap<String, f64>,
}

impl Decision {
    /// The `AutoscalerReady` condition, keeping `previous`'s transition time while it holds.
    pub fn condition(
        &self,
        previous: &[Condition],
        generation: Option<i64>,
        now: &Time,
    ) -> Condition {
        let (holds, reason, message) = &self.ready;
        let status = if *holds { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == AUTOSCALER_READY && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: AUTOSCALER_READY.to_owned(),
            status: status.to_owned(),
            reason: reason.clone(),
            message: message.clone(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// One cluster's loop.
struct Tracked {
    plan: watch::Sender<Plan>,
    decision: Arc<Mutex<Option<Decision>>>,
    touched: Arc<Mutex<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The autoscaler's own series, registered in the operator's registry.
#[derive(Clone)]
struct Series {
    demand: GaugeVec,
    desired: IntGaugeVec,
    errors: IntCounterVec,
    latency: HistogramVec,
    loops: Gauge,
}

impl Series {
    fn new() -> Self {
        let cluster = &["namespace", "cluster"];
        Series {
            demand: GaugeVec::new(
                Opts::new(
                    "flotilla_operator_autoscaler_demand_slots",
                    "Demand in task slots last read, by cluster.",
                ),
                cluster,
            )
            .expect("a valid series"),
            desired: IntGaugeVec::new(
                Opts::new(
                    "flotilla_operator_autoscaler_desired_workers",
                    "Workers the autoscaler wants, by cluster and group.",
                ),
                &["namespace", "cluster", "group"],
            )
            .expect("a valid series"),
            errors: IntCounterVec::new(
                Opts::new(
                    "flotilla_operator_autoscaler_read_errors_total",
                    "Failed reads of the metrics, by cluster and reason.",
                ),
                &["namespace", "cluster", "reason"],
            )
            .expect("a valid series"),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "flotilla_operator_autoscaler_read_seconds",
                    "Time one read of a cluster's metrics took.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["source"],
            )
            .expect("a valid series"),
            loops: Gauge::new(
                "flotilla_operator_autoscaler_loops",
                "Clusters the autoscaler runs a loop for.",
            )
            .expect("a valid series"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.demand.clone()),
            Box::new(self.desired.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.latency.clone()),
            Box::new(self.loops.clone()),
        ]
    }

    fn forget(&self, namespace: &str, cluster: &str, groups: &[String]) {
        let _ = self.demand.remove_label_values(&[namespace, cluster]);
        for reason in ReadError::REASONS {
            let _ = self
                .errors
                .remove_label_values(&[namespace, cluster, reason]);
        }
        for group in groups {
            let _ = self
                .desired
                .remove_label_values(&[namespace, cluster, group.as_str()]);
        }
    }
}

/// Every cluster's loop.
pub struct Autoscalers {
    reader: Reader,
    /// The operator's default Prometheus URL.
    default_url: OnceLock<String>,
    loops: Mutex<HashMap<String, Tracked>>,
    /// Asks for reconciles: `(namespace, name)`, one sender per controller.
    wake: Mutex<Vec<mpsc::UnboundedSender<(String, String)>>>,
    series: Series,
}

impl Autoscalers {
    /// The autoscaler, with its series in `metrics`.
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        let series = Series::new();
        for collector in series.collectors() {
            metrics.register(collector);
        }
        Autoscalers {
            reader: Reader::new(READ_TIMEOUT),
            default_url: OnceLock::new(),
            loops: Mutex::new(HashMap::new()),
            wake: Mutex::new(Vec::new()),
            series,
        }
    }

    /// The operator's default Prometheus URL.
    pub fn default_url(&self) -> Option<&str> {
        self.default_url.get().map(String::as_str)
    }

    /// Sets the Prometheus URL read by clusters that name none (once, at start).
    pub fn set_default_url(&self, url: String) {
        let _ = self.default_url.set(url);
    }

    fn loops(&self) -> MutexGuard<'_, HashMap<String, Tracked>> {
        // Handles only; one left by a panicking holder is still right.
        self.loops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of clusters `(namespace, name)` whose decision changed.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<(String, String)> {
        let (sender, receiver) = mpsc::unbounded();
        self.wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        receiver
    }

    /// Starts or updates the loop of a cluster and returns its latest decision (`None` before
    /// the first one). `start` gives each group's size to start from.
    pub fn track(
        self: &Arc<Self>,
        ctx: &Arc<Context>,
        plan: Plan,
        start: impl Fn(&str) -> u32,
    ) -> Option<Decision> {
        let key = format!("{}/{}", plan.namespace, plan.name);
        let mut loops = self.loops();
        loops.retain(|_, tracked| !tracked.task.is_finished());
        if let Some(tracked) = loops.get(&key) {
            *tracked.touched.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tracked.plan.send_if_modified(|current| {
                let changed = *current != plan;
                *current = plan;
                changed
            });
            return tracked
                .decision
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        let policies: BTreeMap<String, GroupPolicy> = plan
            .groups
            .iter()
            .map(|(name, limits)| {
                let size = limits.clamp(start(name));
                (name.clone(), GroupPolicy::new(limits.clone(), size))
            })
            .collect();
        let (sender, receiver) = watch::channel(plan);
        let decision = Arc::new(Mutex::new(None));
        let touched = Arc::new(Mutex::new(Instant::now()));
        let task = tokio::spawn(
            Loop {
                autoscalers: self.clone(),
                ctx: ctx.clone(),
                plan: receiver,
                policies,
                decision: decision.clone(),
                touched: touched.clone(),
                failures: 0,
                started: Instant::now(),
                scaled: BTreeMap::new(),
                warned: false,
            }
            .run(),
        );
        loops.insert(
            key,
            Tracked {
                plan: sender,
                decision,
                touched,
                task,
            },
        );
        self.series.loops.set(loops.len() as f64);
        None
    }

    /// Stops the loop of a cluster (autoscaling off, suspended, or the cluster is going).
    pub fn untrack(&self, namespace: &str, name: &str) {
        let mut loops = self.loops();
        if let Some(tracked) = loops.remove(&format!("{namespace}/{name}")) {
            let groups: Vec<String> = tracked
                .plan
                .borrow()
                .groups
                .iter()
                .map(|(g, _)| g.clone())
                .collect();
            self.series.forget(namespace, name, &groups);
        }
        self.series.loops.set(loops.len() as f64);
    }

    fn wake(&self, namespace: &str, name: &str) {
        self.wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sender| {
                sender
                    .unbounded_send((namespace.to_owned(), name.to_owned()))
                    .is_ok()
            });
    }
}

/// The state of one cluster's loop.
struct Loop {
    autoscalers: Arc<Autoscalers>,
    ctx: Arc<Context>,
    plan: watch::Receiver<Plan>,
    policies: BTreeMap<String, GroupPolicy>,
    decision: Arc<Mutex<Option<Decision>>>,
    touched: Arc<Mutex<Instant>>,
    failures: u32,
    started: Instant,
    scaled: BTreeMap<String, Time>,
    /// Whether the Warning Event of the current outage was recorded.
    warned: bool,
}

impl Loop {
    async fn run(mut self) {
        loop {
            self.tick().await;
            let poll = self.plan.borrow().poll;
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                changed = self.plan.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let idle = self
                .touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if idle > ORPHANED {
                let plan = self.plan.borrow().clone();
                tracing::info!(
                    cluster = plan.name,
                    namespace = plan.namespace,
                    "autoscaler loop of a cluster no longer reconciled stops"
                );
                return;
            }
        }
    }

    async fn tick(&mut self) {
        let plan = self.plan.borrow_and_update().clone();
        // Groups added or removed, limits changed.
        self.policies
            .retain(|name, _| plan.groups.iter().any(|(g, _)| g == name));
        for (name, limits) in &plan.groups {
            match self.policies.get_mut(name) {
                Some(policy) => policy.set_limits(limits.clone()),
                None => {
                    let size = limits.clamp(0);
                    self.policies
                        .insert(name.clone(), GroupPolicy::new(limits.clone(), size));
                }
            }
        }
        let before: BTreeMap<String, u32> = self
            .policies
            .iter()
            .map(|(name, p)| (name.clone(), p.current()))
            .collect();
        let series = &self.autoscalers.series;
        let (read, source_label) = match &plan.source {
            Some(source) => {
                let started = Instant::now();
                let read = self
                    .autoscalers
                    .reader
                    .read(source, &plan.name, &plan.namespace)
                    .await;
                let label = match source {
                    Source::Prometheus { .. } => "prometheus",
                    Source::Head { .. } => "head",
                };
                series
                    .latency
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
                (read, label)
            }
            None => (
                Err(ReadError::Unreachable {
                    from: "the head".into(),
                    message: "no head pod runs yet, and no Prometheus URL is set".into(),
                }),
                "none",
            ),
        };
        let _ = source_label;
        let now = Time(Timestamp::now());
        let previous = self
            .decision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut status = previous
            .as_ref()
            .map(|d| d.status.clone())
            .unwrap_or_default();
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        let mut infeasible = BTreeMap::new();
        let ready = match read {
            Ok(reading) => {
                self.failures = 0;
                self.warned = false;
                let split = split(&plan, &reading);
                let demand = split.by_group;
                let elapsed = self.started.elapsed();
                for (name, policy) in &mut self.policies {
                    let busy = reading.busy.get(name).copied().unwrap_or(0);
                    let step =
                        policy.sample(elapsed, demand.get(name).copied().unwrap_or(0.0), busy);
                    if let Some(h) = step.held {
                        held.insert(name.clone(), h);
                    }
                }
                series
                    .demand
                    .with_label_values(&[&plan.namespace, &plan.name])
                    .set(reading.total());
                status.last_metric_value = Some(reading.total());
                status.consecutive_failures = 0;
                infeasible = split.infeasible;
                (
                    true,
                    "MetricsRead".to_owned(),
                    format!("reading demand from {}", describe(plan.source.as_ref())),
                )
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                series
                    .errors
                    .with_label_values(&[&plan.namespace, &plan.name, error.reason()])
                    .inc();
                status.consecutive_failures = i32::try_from(self.failures).unwrap_or(i32::MAX);
                let failing = self.failures >= plan.failure_threshold.max(1);
                if failing {
                    for policy in self.policies.values_mut() {
                        match plan.fallback {
                            FallbackBehavior::Hold => {}
                            FallbackBehavior::MinReplicas => policy.force(policy.limits().min),
                            FallbackBehavior::MaxReplicas => policy.force(policy.limits().max),
                        }
                    }
                    let message = format!(
                        "{} failed reads in a row, fallback {} applies: {error}",
                        self.failures,
                        fallback_name(plan.fallback)
                    );
                    if !self.warned {
                        self.warned = true;
                        self.ctx
                            .event_as(
                                &plan.reference,
                                None,
                                EventType::Warning,
                                "AutoscalerMetricsFailed",
                                error.reason(),
                                message.clone(),
                            )
                            .await;
                    }
                    (false, error.reason().to_owned(), message)
                } else {
                    // Below the threshold the last good decision holds and the condition keeps
                    // its value.
                    previous.as_ref().map_or_else(
                        || (false, error.reason().to_owned(), error.to_string()),
                        |d| d.ready.clone(),
                    )
                }
            }
        };

        let sizes: BTreeMap<String, u32> = self
            .policies
            .iter()
            .map(|(name, p)| (name.clone(), p.current()))
            .collect();
        let total_before: u32 = before.values().sum();
        let total: u32 = sizes.values().sum();
        let mut notes = Vec::new();
        for (name, &size) in &sizes {
            series
                .desired
                .with_label_values(&[&plan.namespace, &plan.name, name])
                .set(i64::from(size));
            let old = before.get(name).copied().unwrap_or(size);
            if old != size {
                self.scaled.insert(name.clone(), now.clone());
                let why = held
                    .get(name)
                    .map(|h| format!("; {}", h.describe()))
                    .unwrap_or_default();
                notes.push(format!("group {name}: {old} → {size} workers{why}"));
            }
        }
        let demand_text = status
            .last_metric_value
            .map_or_else(|| "unknown".to_owned(), |d| format!("{d}"));
        let (decision, reason) = if !notes.is_empty() {
            let kind = if total > total_before
                || (total == total_before
                    && sizes
                        .iter()
                        .any(|(g, s)| before.get(g).is_some_and(|b| s > b)))
            {
                ScalingDecision::ScaleUp
            } else {
                ScalingDecision::ScaleDown
            };
            let cause = if ready.0 {
                format!("demand {demand_text} slots")
            } else {
                format!("fallback {} without metrics", fallback_name(plan.fallback))
            };
            (kind, format!("{cause}: {}", notes.join(", ")))
        } else {
            let holds: Vec<String> = held
                .iter()
                .map(|(g, h)| format!("group {g} {}", h.describe()))
                .collect();
            let reason = if !ready.0 {
                format!("size held: {}", ready.2)
            } else if holds.is_empty() {
                format!("demand {demand_text} slots: every group has the workers it needs")
            } else {
                format!("demand {demand_text} slots: {}", holds.join(", "))
            };
            (ScalingDecision::Hold, reason)
        };
        if decision != ScalingDecision::Hold {
            let event = match decision {
                ScalingDecision::ScaleUp => "ScaledUp",
                _ => "ScaledDown",
            };
            // One series per size reached: another decision is another Event with its own note.
            let action = format!("{event}To{total}");
            self.ctx
                .event_as(
                    &plan.reference,
                    None,
                    EventType::Normal,
                    event,
                    &action,
                    reason.clone(),
                )
                .await;
            status.last_decision = Some(decision);
            status.last_decision_time = Some(now.clone());
            status.last_scale_time = Some(now.clone());
            status.reason = Some(reason);
        } else if status.last_decision != Some(ScalingDecision::Hold)
            || status.reason.as_deref() != Some(reason.as_str())
        {
            // The latest decision is shown, and its time moves only when what it says changes
            // (each group's last scale time stays in status.workerGroups).
            status.last_decision = Some(ScalingDecision::Hold);
            status.last_decision_time = Some(now.clone());
            status.reason = Some(reason);
        }
        status.desired_workers = Some(i32::try_from(total).unwrap_or(i32::MAX));
        let new = Decision {
            sizes,
            scaled: self.scaled.clone(),
            status,
            ready,
            infeasible,
        };
        let changed = previous.as_ref() != Some(&new);
        *self.decision.lock().unwrap_or_else(|e| e.into_inner()) = Some(new);
        if changed {
            self.autoscalers.wake(&plan.namespace, &plan.name);
        }
    }
}

/// The fallback as the spec spells it.
fn fallback_name(behavior: FallbackBehavior) -> &'static str {
    match behavior {
        FallbackBehavior::Hold => "hold",
        FallbackBehavior::MinReplicas => "minReplicas",
        FallbackBehavior::MaxReplicas => "maxReplicas",
    }
}

fn describe(source: Option<&Source>) -> String {
    source.map_or_else(|| "nowhere".to_owned(), Source::describe)
}

/// The demand of `reading` over the groups of `plan`.
fn split(plan: &Plan, reading: &Reading) -> demand::Split {
    let none = Offer::default();
    let groups: Vec<Group<'_>> = plan
        .groups
        .iter()
        .map(|(name, limits)| Group {
            name,
            limits,
            offer: plan.offers.get(name).unwrap_or(&none),
        })
        .collect();
    demand::split(&groups, reading)
}
