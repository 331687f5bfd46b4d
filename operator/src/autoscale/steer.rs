//! Where the autoscaler meets the reconcile: the loop's [`Plan`] from a validated spec, the
//! groups sized by the latest [`Decision`], and the status fields the decision fills.

use std::{sync::Arc, time::Duration};

use super::{
    demand::{Offer, SLOTS},
    policy::Limits,
    source::Source,
    Decision, Plan, AUTOSCALER_READY,
};
use crate::{
    cluster::validate::ValidatedCluster,
    context::Context,
    crd::{ComputeCluster, ComputeClusterStatus},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Condition type: every task can run on some group.
pub const DEMAND_FEASIBLE: &str = "DemandFeasible";

/// Starts, updates or stops the autoscaler loop of `cluster`, and sizes `valid`'s groups by its
/// latest decision (or, before the first one, by the sizes the last status recorded). Returns
/// the decision; `None` when autoscaling is off, or before the loop's first read.
pub fn steer(
    ctx: &Arc<Context>,
    cluster: &ComputeCluster,
    valid: &mut ValidatedCluster,
    head_ip: Option<&str>,
) -> Option<Decision> {
    let autoscaling = valid
        .autoscaling
        .as_ref()
        .filter(|a| a.enabled && !valid.suspend);
    let Some(autoscaling) = autoscaling else {
        ctx.autoscalers.untrack(&valid.namespace, &valid.name);
        return None;
    };
    let prometheus = autoscaling.prometheus.as_ref();
    let url = prometheus
        .and_then(|p| p.url.clone())
        .or_else(|| ctx.autoscalers.default_url().map(str::to_owned));
    let source = match (url, head_ip) {
        (Some(url), _) => Some(Source::Prometheus {
            url,
            query: prometheus.and_then(|p| p.query.clone()),
        }),
        (None, Some(ip)) => Some(Source::Head { ip: ip.to_owned() }),
        (None, None) => None,
    };
    let seconds = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or(0));
    let plan = Plan {
        namespace: valid.namespace.clone(),
        name: valid.name.clone(),
        reference: valid.reference(),
        source,
        poll: seconds(autoscaling.poll_interval_seconds.max(1)),
        groups: valid
            .groups
            .iter()
            .map(|g| {
                let limits = Limits {
                    min: g.min_replicas,
                    max: g.max_replicas,
                    // A worker that counts its own CPUs: the formula takes it as one slot.
                    slots_per_worker: g.slots.unwrap_or(1),
                    target_utilization: autoscaling.target_slot_utilization,
                    up_window: seconds(autoscaling.scale_up.stabilization_window_seconds),
                    down_window: seconds(autoscaling.scale_down.stabilization_window_seconds),
                    max_step_up: autoscaling
                        .scale_up
                        .max_step
                        .and_then(|s| u32::try_from(s).ok()),
                    max_step_down_percent: u32::try_from(autoscaling.scale_down.max_step_percent)
                        .unwrap_or(100),
                };
                (g.name.clone(), limits)
            })
            .collect(),
        offers: valid
            .groups
            .iter()
            .map(|g| {
                let offer = Offer {
                    slots: g.slots,
                    custom: g.custom.clone(),
                };
                (g.name.clone(), offer)
            })
            .collect(),
        failure_threshold: u32::try_from(autoscaling.fallback.failure_threshold).unwrap_or(1),
        fallback: autoscaling.fallback.behavior,
    };
    // After an operator restart, the sizes the autoscaler chose last, not the spec's.
    let status = cluster.status.as_ref().filter(|s| s.autoscaler.is_some());
    let recorded = |group: &str| {
        status
            .and_then(|s| s.worker_groups.iter().find(|g| g.name == group))
            .map(|g| g.desired_replicas.max(0).unsigned_abs())
    };
    let start = |group: &str| {
        recorded(group).unwrap_or_else(|| valid.group(group).map_or(0, |g| g.replicas))
    };
    let decision = ctx.autoscalers.track(ctx, plan, start);
    for group in &mut valid.groups {
        let size = decision
            .as_ref()
            .and_then(|d| d.sizes.get(&group.name).copied())
            .or_else(|| recorded(&group.name));
        if let Some(size) = size {
            group.replicas = size.clamp(
                group.min_replicas,
                group.max_replicas.max(group.min_replicas),
            );
        }
    }
    decision
}

/// Fills the autoscaler's part of a freshly derived status: `status.autoscaler`, the
/// `AutoscalerReady` and `DemandFeasible` conditions, and each group's last scale time. With
/// autoscaling off (`enabled` false) they are left out.
pub fn fill_status(
    status: &mut ComputeClusterStatus,
    enabled: bool,
    decision: Option<&Decision>,
    cluster: &ComputeCluster,
    now: &Time,
) {
    let previous = cluster.status.as_ref();
    let previous_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    status
        .conditions
        .retain(|c| c.type_ != AUTOSCALER_READY && c.type_ != DEMAND_FEASIBLE);
    if !enabled {
        status.autoscaler = None;
        return;
    }
    let Some(decision) = decision else {
        // Before the first read: what the last operator recorded stays.
        status.autoscaler = previous.and_then(|s| s.autoscaler.clone());
        status.conditions.extend(
            previous_conditions
                .iter()
                .filter(|c| c.type_ == AUTOSCALER_READY || c.type_ == DEMAND_FEASIBLE)
                .cloned(),
        );
        return;
    };
    status.autoscaler = Some(decision.status.clone());
    let generation = cluster.metadata.generation;
    status
        .conditions
        .push(decision.condition(previous_conditions, generation, now));
    let (holds, reason, message) = if decision.infeasible.is_empty() {
        (
            true,
            "Feasible",
            "every pending task fits one worker of some group".to_owned(),
        )
    } else {
        let asked: Vec<String> = decision
            .infeasible
            .iter()
            .map(|(resource, slots)| {
                if resource == SLOTS {
                    format!("slots, more than one worker of any group has ({slots} slots of tasks)")
                } else {
                    format!("{resource} ({slots} slots of tasks)")
                }
            })
            .collect();
        (
            false,
            "NoGroupOffers",
            format!(
                "pending tasks ask for what no worker group offers even at maxReplicas, so the \
                 autoscaler does not chase them: {}",
                asked.join(", ")
            ),
        )
    };
    let state = if holds { "True" } else { "False" };
    let last_transition_time = previous_conditions
        .iter()
        .find(|c| c.type_ == DEMAND_FEASIBLE && c.status == state)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    status
        .conditions
        .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: DEMAND_FEASIBLE.to_owned(),
            status: state.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        });
    for group in &mut status.worker_groups {
        if let Some(time) = decision.scaled.get(&group.name) {
            group.last_scale_time = Some(time.clone());
        }
    }
}
