//! Which worker group serves which demand: pure, from the groups of the spec (their order, what
//! one worker offers, their `maxReplicas`) and one [`Reading`].
//!
//! The head knows only the workers registered now, so it reports pending tasks by what one task
//! asks (its slots and custom resources), and running work by the group it runs on. The groups
//! the spec declares decide the rest, including groups scaled to zero:
//! - running tasks and live actors count toward the group they run on (work of a group the spec
//!   no longer has counts as plain work);
//! - a pending task asking for a custom resource counts toward the first group, in spec order,
//!   whose one worker offers all it asks (slots and resources) and whose `maxReplicas` is above 0;
//! - plain pending tasks fill the groups that fit them in spec order, each up to what its
//!   `maxReplicas` workers run, the last taking the rest;
//! - a pending task that no group could run, even at `maxReplicas`, is infeasible: it is counted
//!   under the resource that no group offers enough of (`slots` when it asks more slots than one
//!   worker of any group has, `a+b` when groups offer each but none all together, `a+slots` when
//!   the group offering `a` has too few slots) and the autoscaler does not chase it.

use std::collections::BTreeMap;

use super::{policy::Limits, source::Reading};

/// Name infeasible demand is counted under when no group's worker has enough slots.
pub const SLOTS: &str = "slots";

/// What one worker of a group offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// Task slots; `None` when the worker counts its own CPUs, which fits any task.
    pub slots: Option<u32>,
    /// Named custom resources.
    pub custom: BTreeMap<String, u64>,
}

/// What one pending task asks.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shape {
    /// Task slots.
    pub slots: u32,
    /// Named custom resources.
    pub resources: BTreeMap<String, u64>,
}

impl Offer {
    /// Whether one worker runs a task of `shape`.
    pub fn fits(&self, shape: &Shape) -> bool {
        self.slots.is_none_or(|slots| slots >= shape.slots)
            && shape
                .resources
                .iter()
                .all(|(name, amount)| self.custom.get(name).copied().unwrap_or(0) >= *amount)
    }
}

/// A group as the split sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Group<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its limits (`max`, slots per worker, target utilization).
    pub limits: &'a Limits,
    /// What one worker offers.
    pub offer: &'a Offer,
}

impl Group<'_> {
    /// The demand its `maxReplicas` workers serve.
    fn capacity(&self) -> f64 {
        f64::from(self.limits.max)
            * f64::from(self.limits.slots_per_worker.max(1))
            * self.limits.target_utilization
    }
}

/// Demand by group, and what no group can run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Slots each group of the spec should serve (every group is there).
    pub by_group: BTreeMap<String, f64>,
    /// Slots of pending tasks no group can run, by what no group offers.
    pub infeasible: BTreeMap<String, f64>,
}

/// Splits `reading` over `groups` (in spec order).
pub fn split(groups: &[Group<'_>], reading: &Reading) -> Split {
    let mut split = Split {
        by_group: groups.iter().map(|g| (g.name.to_owned(), 0.0)).collect(),
        ..Split::default()
    };
    // Plain demand of any size, and who may take it.
    let mut spread: Vec<(u32, Vec<usize>, f64)> = Vec::new();
    let everyone: Vec<usize> = (0..groups.len()).collect();
    for (group, slots) in &reading.demand {
        match split.by_group.get_mut(group) {
            Some(own) => *own += slots,
            None => spread.push((1, everyone.clone(), *slots)),
        }
    }
    for (shape, slots) in &reading.pending {
        let fit: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.limits.max > 0 && g.offer.fits(shape))
            .map(|(i, _)| i)
            .collect();
        match fit.first() {
            None => {
                *split.infeasible.entry(missing(groups, shape)).or_default() += slots;
            }
            Some(&first) if !shape.resources.is_empty() => {
                *split
                    .by_group
                    .entry(groups[first].name.to_owned())
                    .or_default() += slots;
            }
            Some(_) => spread.push((shape.slots, fit, *slots)),
        }
    }
    // The biggest tasks first: they have the fewest groups to go to.
    spread.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, fit, mut plain) in spread {
        for (n, &i) in fit.iter().enumerate() {
            let own = split.by_group.entry(groups[i].name.to_owned()).or_default();
            let take = if n + 1 == fit.len() {
                plain
            } else {
                plain.min((groups[i].capacity() - *own).max(0.0))
            };
            *own += take;
            plain -= take;
        }
    }
    split
}

/// What no group offers for a task of `shape`: a resource no group offers enough of, else
/// [`SLOTS`] when no worker has enough slots, else the resources together (`gpu+mem`), with
/// `+slots` when some group offers them all but with too few slots.
fn missing(groups: &[Group<'_>], shape: &Shape) -> String {
    let live = || groups.iter().filter(|g| g.limits.max > 0);
    let lacking = shape.resources.iter().find(|(name, amount)| {
        !live().any(|g| g.offer.custom.get(*name).copied().unwrap_or(0) >= **amount)
    });
    if let Some((name, _)) = lacking {
        return name.clone();
    }
    if !live().any(|g| g.offer.slots.is_none_or(|s| s >= shape.slots)) {
        return SLOTS.to_owned();
    }
    let mut names: Vec<&str> = shape.resources.keys().map(String::as_str).collect();
    let together = Shape {
        slots: 0,
        resources: shape.resources.clone(),
    };
    if live().any(|g| g.offer.fits(&together)) {
        // Some group offers them all, with too few slots.
        names.push(SLOTS);
    }
    names.join("+")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: u32, slots: u32) -> Limits {
        Limits {
            min: 0,
            max,
            slots_per_worker: slots,
            target_utilization: 1.0,
            up_window: Duration::ZERO,
            down_window: Duration::ZERO,
            max_step_up: None,
            max_step_down_percent: 100,
        }
    }

    fn offer(slots: Option<u32>, custom: &[(&str, u64)]) -> Offer {
        Offer {
            slots,
            custom: custom.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    fn shape(slots: u32, resources: &[(&str, u64)]) -> Shape {
        Shape {
            slots,
            resources: resources
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }

    /// `small` (2 workers × 2 slots), `gpu` (at zero now, up to 3 workers × 4 slots, 1 gpu each),
    /// `big` (10 × 8 slots), `off` (offers tpu, but `maxReplicas: 0`).
    fn cluster() -> Vec<(&'static str, Limits, Offer)> {
        vec![
            ("small", limits(2, 2), offer(Some(2), &[])),
            ("gpu", limits(3, 4), offer(Some(4), &[("gpu", 1)])),
            ("big", limits(10, 8), offer(Some(8), &[("mem", 64)])),
            ("off", limits(0, 1), offer(Some(1), &[("tpu", 1)])),
        ]
    }

    fn run(groups: &[(&'static str, Limits, Offer)], reading: &Reading) -> Split {
        let groups: Vec<Group<'_>> = groups
            .iter()
            .map(|(name, limits, offer)| Group {
                name,
                limits,
                offer,
            })
            .collect();
        split(&groups, reading)
    }

    #[test]
    fn plain_demand_fills_groups_in_spec_order() {
        let groups = cluster();
        let reading = Reading {
            demand: [("big".to_owned(), 2.0), ("gone".to_owned(), 1.0)].into(),
            pending: [(shape(1, &[]), 7.0)].into(),
            ..Reading::default()
        };
        let split = run(&groups, &reading);
        // small takes 4 slots (2 workers × 2), gpu 12, big the rest.
        assert_eq!(split.by_group["small"], 4.0);
        assert_eq!(split.by_group["gpu"], 4.0);
        assert_eq!(split.by_group["big"], 2.0);
        assert_eq!(
            split.by_group["off"], 0.0,
            "a group at maxReplicas 0 takes nothing"
        );
        assert!(split.infeasible.is_empty());
        let total: f64 = split.by_group.values().sum();
        assert_eq!(total, reading.total(), "no demand is lost");
    }

    #[test]
    fn a_task_asking_a_resource_goes_to_the_first_group_offering_it_even_at_zero() {
        let groups = cluster();
        let reading = Reading {
            pending: [
                (shape(1, &[("gpu", 1)]), 3.0),
                (shape(2, &[("mem", 32)]), 4.0),
            ]
            .into(),
            ..Reading::default()
        };
        let split = run(&groups, &reading);
        assert_eq!(split.by_group["gpu"], 3.0);
        assert_eq!(split.by_group["big"], 4.0);
        assert_eq!(split.by_group["small"], 0.0);
        assert!(split.infeasible.is_empty());
    }

    #[test]
    fn plain_tasks_too_big_for_a_group_skip_it() {
        let groups = cluster();
        let reading = Reading {
            pending: [(shape(3, &[]), 30.0)].into(),
            ..Reading::default()
        };
        let split = run(&groups, &reading);
        assert_eq!(
            split.by_group["small"], 0.0,
            "a 2-slot worker cannot run them"
        );
        assert_eq!(split.by_group["gpu"], 12.0);
        assert_eq!(split.by_group["big"], 18.0);
    }

    #[test]
    fn what_no_group_can_run_is_infeasible_by_what_is_missing() {
        let groups = cluster();
        let reading = Reading {
            pending: [
                // Offered only by a group at maxReplicas 0.
                (shape(1, &[("tpu", 1)]), 1.0),
                // More gpus than one worker has.
                (shape(1, &[("gpu", 2)]), 2.0),
                // More slots than one worker of any group has.
                (shape(16, &[]), 32.0),
                // Offered, but never by one group together.
                (shape(1, &[("gpu", 1), ("mem", 1)]), 5.0),
                // Offered, but not with that many slots.
                (shape(6, &[("gpu", 1)]), 6.0),
            ]
            .into(),
            ..Reading::default()
        };
        let split = run(&groups, &reading);
        assert_eq!(split.infeasible["tpu"], 1.0);
        assert_eq!(split.infeasible["gpu"], 2.0);
        assert_eq!(split.infeasible["slots"], 32.0);
        assert_eq!(split.infeasible["gpu+mem"], 5.0, "{split:?}");
        assert_eq!(split.infeasible["gpu+slots"], 6.0, "{split:?}");
        assert_eq!(split.by_group.values().sum::<f64>(), 0.0);
    }

    #[test]
    fn a_worker_counting_its_own_cpus_fits_any_size() {
        let groups = vec![("auto", limits(2, 1), offer(None, &[]))];
        let reading = Reading {
            pending: [(shape(64, &[]), 64.0)].into(),
            ..Reading::default()
        };
        let split = run(&groups, &reading);
        assert_eq!(split.by_group["auto"], 64.0);
        assert!(split.infeasible.is_empty());
    }
}
