//! The autoscaling policy of one worker group, in the style of Kubernetes' HorizontalPodAutoscaler:
//! pure, with no I/O and no clock (the caller passes the time of each sample), so it is tested on
//! recorded demand traces.
//!
//! Each sample of demand (task slots) gives a recommendation,
//! `clamp(ceil(demand / (slotsPerWorker × targetSlotUtilization)), minReplicas, maxReplicas)`,
//! never below the workers that are busy now. The size then follows the HPA's stabilization rule:
//! it grows to the *lowest* recommendation of the scale-up window and shrinks to the *highest*
//! of the scale-down window, so a short spike does not grow the group (when the up window is
//! set) and a short dip never shrinks it. A step adds at most `maxStep` workers and removes at
//! most `maxStepPercent` of the current size (at least one). The result is always within
//! `[minReplicas, maxReplicas]`.

use std::{collections::VecDeque, time::Duration};

/// The settings of one group's policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Task slots of one worker.
    pub slots_per_worker: u32,
    /// Fraction of the slots to keep busy (greater than 0).
    pub target_utilization: f64,
    /// How long a higher recommendation must last before the group grows.
    pub up_window: Duration,
    /// How long a lower recommendation must last before the group shrinks.
    pub down_window: Duration,
    /// Most workers added in one step; `None`: no limit.
    pub max_step_up: Option<u32>,
    /// Most workers removed in one step, in percent of the current size (at least one worker).
    pub max_step_down_percent: u32,
}

impl Limits {
    /// The workers `demand` task slots need, before any window or step rule: at least `busy`
    /// (a busy worker is never the reason to shrink), within `[min, max]`.
    pub fn recommend(&self, demand: f64, busy: u32) -> u32 {
        let per_worker = f64::from(self.slots_per_worker.max(1)) * self.target_utilization;
        let needed = if demand.is_finite() && demand > 0.0 && per_worker > 0.0 {
            // Rounding noise (3.0000000001 slots) must not add a worker.
            let exact = demand / per_worker;
            let rounded = exact.round();
            let workers = if (exact - rounded).abs() < 1e-9 {
                rounded
            } else {
                exact.ceil()
            };
            workers.min(f64::from(u32::MAX)) as u32
        } else {
            0
        };
        self.clamp(needed.max(busy))
    }

    /// `size` within `[min, max]` (`max` wins should `min` exceed it).
    pub fn clamp(&self, size: u32) -> u32 {
        size.max(self.min).min(self.max)
    }

    /// The size one step may reach from `current` towards `target`.
    pub fn step(&self, current: u32, target: u32) -> u32 {
        if target > current {
            let most = self.max_step_up.map_or(u32::MAX, |s| s.max(1));
            target.min(current.saturating_add(most))
        } else {
            let percent = u64::from(current) * u64::from(self.max_step_down_percent.min(100));
            let most = u32::try_from(percent.div_ceil(100))
                .unwrap_or(u32::MAX)
                .max(1);
            target.max(current.saturating_sub(most))
        }
    }
}

/// What held a group back from its recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The scale-up stabilization window: a lower recommendation in it.
    UpWindow,
    /// The scale-down stabilization window: a higher recommendation in it.
    DownWindow,
    /// `scaleUp.maxStep`.
    MaxStep,
    /// `scaleDown.maxStepPercent`.
    MaxStepPercent,
}

impl Held {
    /// How the reason reads in status and Events.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UpWindow => "held back by the scale-up stabilization window",
            Self::DownWindow => "held back by the scale-down stabilization window",
            Self::MaxStep => "limited by scaleUp.maxStep",
            Self::MaxStepPercent => "limited by scaleDown.maxStepPercent",
        }
    }
}

/// The outcome of one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The recommendation of this sample alone.
    pub recommended: u32,
    /// The size the group should have now.
    pub desired: u32,
    /// What kept `desired` from `recommended`, if anything did.
    pub held: Option<Held>,
}

/// The policy state of one group: its size and the recent recommendations.
#[derive(Clone, Debug)]
pub struct GroupPolicy {
    limits: Limits,
    current: u32,
    /// `(time, recommendation)`, oldest first, no older than the longer window.
    history: VecDeque<(Duration, u32)>,
    /// The size the group started with counts as a recommendation made at time zero: a
    /// restarted operator neither shrinks nor grows a group before the window has passed.
    started: u32,
}

impl GroupPolicy {
    /// A group that has `current` workers now (clamped to the limits on the first step).
    pub fn new(limits: Limits, current: u32) -> Self {
        GroupPolicy {
            limits,
            current,
            history: VecDeque::new(),
            started: current,
        }
    }

    /// The size decided last.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// New limits (the spec changed); the history is kept, the size clamped on the next step.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sets the size without a recommendation (a fallback, or the user's own size).
    pub fn force(&mut self, size: u32) {
        self.current = self.limits.clamp(size);
    }

    /// Takes a sample of `demand` task slots with `busy` busy workers at time `now` (monotonic,
    /// never decreasing) and decides the size.
    pub fn sample(&mut self, now: Duration, demand: f64, busy: u32) -> Step {
        let limits = &self.limits;
        let recommended = limits.recommend(demand, busy);
        self.history.push_back((now, recommended));
        let keep = limits.up_window.max(limits.down_window);
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > keep)
        {
            self.history.pop_front();
        }
        let within = |window: Duration| {
            self.history
                .iter()
                .filter(move |(t, _)| now.saturating_sub(*t) <= window)
                .map(|(_, r)| *r)
        };
        let start = |window: Duration| (now < window).then_some(self.started);
        let up_target = within(limits.up_window)
            .chain(start(limits.up_window))
            .min()
            .unwrap_or(recommended);
        let down_target = within(limits.down_window)
            .chain(start(limits.down_window))
            .max()
            .unwrap_or(recommended);
        let current = limits.clamp(self.current);
        let (target, window_held) = if up_target > current {
            (
                up_target,
                (up_target < recommended).then_some(Held::UpWindow),
            )
        } else if down_target < current {
            (
                down_target,
                (down_target > recommended).then_some(Held::DownWindow),
            )
        } else {
            let held = if recommended > current {
                Some(Held::UpWindow)
            } else if recommended < current {
                Some(Held::DownWindow)
            } else {
                None
            };
            (current, held)
        };
        let stepped = limits.clamp(limits.step(current, target));
        let held = if stepped != target {
            Some(if target > current {
                Held::MaxStep
            } else {
                Held::MaxStepPercent
            })
        } else {
            window_held
        };
        self.current = stepped;
        Step {
            recommended,
            desired: stepped,
            held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            min: 1,
            max: 10,
            slots_per_worker: 4,
            target_utilization: 1.0,
            up_window: Duration::ZERO,
            down_window: Duration::from_secs(60),
            max_step_up: None,
            max_step_down_percent: 100,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs `trace` (`(second, demand, busy)`) and returns the size after each sample.
    fn run(limits: Limits, start: u32, trace: &[(u64, f64, u32)]) -> Vec<u32> {
        let mut policy = GroupPolicy::new(limits, start);
        trace
            .iter()
            .map(|&(t, demand, busy)| policy.sample(secs(t), demand, busy).desired)
            .collect()
    }

    /// Pods created plus pods removed over a run of sizes.
    fn churn(start: u32, sizes: &[u32]) -> u32 {
        let mut last = start;
        let mut moved = 0;
        for &s in sizes {
            moved += s.abs_diff(last);
            last = s;
        }
        moved
    }

    #[test]
    fn the_formula_rounds_up_and_clamps() {
        let l = limits();
        assert_eq!(l.recommend(0.0, 0), 1);
        assert_eq!(l.recommend(4.0, 0), 1);
        assert_eq!(l.recommend(4.5, 0), 2);
        assert_eq!(l.recommend(12.000_000_000_1, 0), 3);
        assert_eq!(l.recommend(1000.0, 0), 10);
        assert_eq!(l.recommend(f64::NAN, 0), 1);
        assert_eq!(l.recommend(-3.0, 0), 1);
        assert_eq!(l.recommend(0.0, 3), 3, "never below the busy workers");
        let half = Limits {
            target_utilization: 0.5,
            ..limits()
        };
        assert_eq!(half.recommend(4.0, 0), 2);
        let zero = Limits { min: 0, ..limits() };
        assert_eq!(zero.recommend(0.0, 0), 0);
    }

    #[test]
    fn a_burst_grows_at_once_and_shrinks_after_the_window() {
        // 1 worker; 16 slots of work arrive at t=10 and are done at t=40.
        let trace: Vec<(u64, f64, u32)> = (0..20)
            .map(|i| {
                let t = i * 5;
                let demand = if (10..40).contains(&t) { 16.0 } else { 0.0 };
                let busy = if (10..40).contains(&t) { 4 } else { 0 };
                (t, demand, busy)
            })
            .collect();
        let sizes = run(limits(), 1, &trace);
        assert_eq!(&sizes[..2], &[1, 1]);
        assert_eq!(sizes[2], 4, "grows within one sample of the burst");
        // Stays at 4 for the whole 60 s window after the queue empties at t=40 ...
        for (i, &(t, _, _)) in trace.iter().enumerate().skip(2) {
            assert_eq!(sizes[i], 4, "at t={t}: {sizes:?}");
        }
        // ... and is back at 1 as soon as it has passed (t=100), in one step.
        let mut policy = GroupPolicy::new(limits(), 1);
        for &(t, d, b) in &trace {
            policy.sample(secs(t), d, b);
        }
        let after = policy.sample(secs(100), 0.0, 0);
        assert_eq!((after.desired, after.held), (1, None));
        assert_eq!(churn(1, &sizes), 3, "no flapping: {sizes:?}");
    }

    #[test]
    fn a_sawtooth_inside_the_window_never_flaps() {
        // Demand swings between 16 and 2 slots every 10 s: the down window holds the top.
        let trace: Vec<(u64, f64, u32)> = (0..30)
            .map(|i| (i * 5, if (i / 2) % 2 == 0 { 16.0 } else { 2.0 }, 1))
            .collect();
        let sizes = run(limits(), 1, &trace);
        assert_eq!(sizes[0], 4);
        assert!(sizes.iter().all(|&s| s == 4), "{sizes:?}");
        assert_eq!(churn(1, &sizes), 3);
    }

    #[test]
    fn a_slow_ramp_grows_step_by_step_and_respects_max_step() {
        let l = Limits {
            max_step_up: Some(2),
            ..limits()
        };
        // Demand grows by 4 slots (one worker) every 10 s, up to 40 slots.
        let trace: Vec<(u64, f64, u32)> = (0..12).map(|i| (i * 10, (i * 4) as f64, 0)).collect();
        let sizes = run(l.clone(), 1, &trace);
        assert!(sizes.windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] - w[0] <= 2), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 10);
        // A jump from 0 to 40 slots takes 2 workers per step.
        let mut policy = GroupPolicy::new(l, 1);
        let first = policy.sample(secs(0), 40.0, 0);
        assert_eq!((first.recommended, first.desired), (10, 3));
        assert_eq!(first.held, Some(Held::MaxStep));
    }

    #[test]
    fn noise_around_a_threshold_does_not_flap() {
        // Demand wobbles around 8 slots (2 workers): 7.5, 8.5, 7.9, 8.1, ...
        let trace: Vec<(u64, f64, u32)> = (0..40)
            .map(|i| (i * 5, if i % 2 == 0 { 8.5 } else { 7.5 }, 2))
            .collect();
        let sizes = run(limits(), 2, &trace);
        assert!(sizes.iter().all(|&s| s == 3), "{sizes:?}");
        assert_eq!(churn(2, &sizes), 1);
        // With an up window as long as the noise period, it does not grow at all.
        let patient = Limits {
            up_window: secs(10),
            ..limits()
        };
        let sizes = run(patient, 2, &trace);
        assert!(sizes.iter().all(|&s| s == 2), "{sizes:?}");
    }

    #[test]
    fn scale_down_steps_by_percent_at_least_one() {
        let l = Limits {
            max: 100,
            down_window: Duration::ZERO,
            max_step_down_percent: 25,
            ..limits()
        };
        let mut policy = GroupPolicy::new(l, 20);
        let sizes: Vec<u32> = (0..8)
            .map(|t| policy.sample(secs(t), 0.0, 0).desired)
            .collect();
        assert_eq!(sizes, [15, 11, 8, 6, 4, 3, 2, 1]);
    }

    #[test]
    fn scale_to_zero_and_back() {
        let l = Limits {
            min: 0,
            down_window: secs(10),
            ..limits()
        };
        let trace = [(0, 0.0, 0), (5, 0.0, 0), (11, 0.0, 0), (20, 3.0, 0)];
        let sizes = run(l, 1, &trace);
        assert_eq!(sizes, [1, 1, 0, 1]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn any_limits() -> impl Strategy<Value = Limits> {
            (
                0u32..20,
                0u32..40,
                1u32..16,
                0.1f64..4.0,
                0u64..120,
                0u64..120,
                proptest::option::of(1u32..10),
                1u32..=100,
            )
                .prop_map(|(min, extra, slots, target, up, down, step, pct)| Limits {
                    min,
                    max: min + extra,
                    slots_per_worker: slots,
                    target_utilization: target,
                    up_window: Duration::from_secs(up),
                    down_window: Duration::from_secs(down),
                    max_step_up: step,
                    max_step_down_percent: pct,
                })
        }

        proptest! {
            #[test]
            fn every_size_is_within_bounds_and_steps(
                limits in any_limits(),
                start in 0u32..60,
                samples in proptest::collection::vec((0u64..30, 0.0f64..500.0, 0u32..60), 1..60),
            ) {
                let mut policy = GroupPolicy::new(limits.clone(), start);
                let mut now = Duration::ZERO;
                let mut last = limits.clamp(start);
                for (gap, demand, busy) in samples {
                    now += Duration::from_secs(gap);
                    let step = policy.sample(now, demand, busy);
                    prop_assert!(step.desired >= limits.min && step.desired <= limits.max);
                    prop_assert!(step.recommended >= limits.min && step.recommended <= limits.max);
                    if step.desired > last {
                        if let Some(most) = limits.max_step_up {
                            prop_assert!(step.desired - last <= most);
                        }
                        prop_assert!(step.desired <= step.recommended);
                    } else if step.desired < last {
                        let most = (u64::from(last) * u64::from(limits.max_step_down_percent))
                            .div_ceil(100)
                            .max(1);
                        prop_assert!(u64::from(last - step.desired) <= most);
                        prop_assert!(step.desired >= step.recommended);
                        prop_assert!(step.desired >= busy.min(limits.max));
                    }
                    last = step.desired;
                }
            }

            #[test]
            fn the_recommendation_is_the_clamped_ceiling(
                limits in any_limits(),
                demand in 0.0f64..1000.0,
            ) {
                let r = limits.recommend(demand, 0);
                let per_worker = f64::from(limits.slots_per_worker) * limits.target_utilization;
                prop_assert!(r >= limits.min && r <= limits.max);
                if r > limits.min && r < limits.max {
                    // r workers are enough and r - 1 are not (up to rounding noise).
                    prop_assert!(f64::from(r) * per_worker + 1e-6 >= demand);
                    prop_assert!(f64::from(r - 1) * per_worker < demand + 1e-6);
                }
            }

            #[test]
            fn a_steady_demand_settles_and_stays(
                limits in any_limits(),
                start in 0u32..60,
                demand in 0.0f64..500.0,
            ) {
                let mut policy = GroupPolicy::new(limits.clone(), start);
                let target = limits.recommend(demand, 0);
                let mut t = 0;
                // Enough steps of 10 s to pass both windows and any step limit.
                for _ in 0..200 {
                    policy.sample(Duration::from_secs(t), demand, 0);
                    t += 10;
                }
                prop_assert_eq!(policy.current(), target);
                let again = policy.sample(Duration::from_secs(t), demand, 0);
                prop_assert_eq!(again.desired, target);
                prop_assert_eq!(again.held, None);
            }
        }
    }
}
