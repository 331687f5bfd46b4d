//! What status and metrics see: run counters, the [`Snapshot`] of counters and gauges, and the
//! [`WorkerView`] of each worker.

use std::collections::BTreeMap;

use flotilla_proto::v1 as pb;

use super::{actors::ActorState, tasks::TaskState, workers::Activity, Scheduler};
use crate::ids::WorkerId;

/// Counters and gauges for metrics and `flotilla status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Ready tasks waiting for a slot.
    pub tasks_pending: u64,
    /// Tasks waiting for their arguments.
    pub tasks_waiting: u64,
    /// Tasks running on workers.
    pub tasks_running: u64,
    /// Tasks that finished successfully.
    pub tasks_finished: u64,
    /// Tasks that failed for good.
    pub tasks_failed: u64,
    /// Tasks retried after a worker failure.
    pub tasks_retried: u64,
    /// Busy task slots across live workers.
    pub slots_busy: u64,
    /// Free task slots across live workers.
    pub slots_free: u64,
    /// Workers with nothing running and no actors.
    pub workers_idle: u64,
    /// Workers running something.
    pub workers_busy: u64,
    /// Workers being drained, or drained and waiting to be stopped.
    pub workers_draining: u64,
    /// Actors up and taking calls.
    pub actors_alive: u64,
    /// Actors being created, or restarted after their worker died.
    pub actors_restarting: u64,
    /// Actors dead for good: killed, failed to construct, or out of restarts.
    pub actors_dead: u64,
    /// Objects the head tracks.
    pub objects: u64,
    /// Object store bytes in memory across workers.
    pub store_memory_bytes: u64,
    /// Object store bytes spilled to disk across workers.
    pub store_spilled_bytes: u64,
    /// The head's estimate of the workers the current demand needs.
    pub desired_workers: u64,
    /// Driver sessions connected (not counting the sessions workers keep for nested tasks).
    pub sessions: u64,
    /// Task slots that running tasks and live actors take, by their worker's group (`""` for a
    /// worker that is gone). `""` is always there.
    pub demand_by_group: BTreeMap<String, u64>,
    /// Task slots of pending tasks by what one task asks: `(slots, resources)`, the resources as
    /// [`flotilla_proto::contract::format_resources`] writes them (`""` for none). Which group
    /// serves them, or that none can, is the operator's to say: it knows the groups, including
    /// those with no worker now. At most [`MAX_DEMAND_SHAPES`] shapes; past that the smallest
    /// are counted as one-slot tasks asking for nothing.
    pub pending_by_shape: BTreeMap<(u32, String), u64>,
    /// Workers running something, by group.
    pub busy_by_group: BTreeMap<String, u64>,
    /// Task counts of the jobs the head knows, by id.
    pub jobs: Vec<super::JobView>,
}

/// A worker as `flotilla status` shows it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// The id the head gave it at registration.
    pub id: WorkerId,
    /// Its unique name (its pod name on Kubernetes).
    pub name: String,
    /// Its gRPC address, for peer-to-peer object fetches.
    pub address: String,
    /// Its HTTP address for bulk object transfer (may be empty).
    pub http_address: String,
    /// The node it runs on.
    pub node: String,
    /// Idle, busy, draining or drained.
    pub state: pb::WorkerState,
    /// Its parallel task slots.
    pub slots: u32,
    /// Slots taken by running tasks (at most `slots`).
    pub busy_slots: u32,
    /// Store statistics last reported.
    pub store: pb::StoreStats,
    /// The program it runs.
    pub program: String,
    /// Its worker group.
    pub group: String,
}

/// Final task outcomes, in total and by task name.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) finished: u64,
    pub(super) failed: u64,
    /// Tasks run again after a worker failure, and objects rebuilt from lineage.
    pub(super) retried: u64,
    /// Finished and failed runs by task name (the function, method, or the caller's name).
    by_name: BTreeMap<String, (u64, u64)>,
}

/// Most task names counted apart; runs of further names count under [`OTHER_RUNS`].
pub const MAX_RUN_NAMES: usize = 512;
/// The name runs are counted under once [`MAX_RUN_NAMES`] names are taken.
pub const OTHER_RUNS: &str = "other";
/// The name runs of functions no worker registers are counted under.
pub const UNREGISTERED: &str = "unregistered";

impl Counters {
    /// Counts an outcome, under the task's name when it is known.
    pub(super) fn record(&mut self, name: Option<&str>, finished: bool) {
        if finished {
            self.finished += 1;
        } else {
            self.failed += 1;
        }
        if let Some(name) = name {
            // Names are the callers' to choose: past a bound, new ones share one series.
            let name = if self.by_name.contains_key(name) || self.by_name.len() < MAX_RUN_NAMES {
                name
            } else {
                OTHER_RUNS
            };
            let entry = match self.by_name.get_mut(name) {
                Some(e) => e,
                None => self.by_name.entry(name.to_string()).or_default(),
            };
            if finished {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    pub(super) fn runs_by_name(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.by_name
            .iter()
            .map(|(n, (ok, failed))| (n.as_str(), *ok, *failed))
    }
}

/// Counters and gauges across the scheduler's tables.
pub(super) fn snapshot(s: &Scheduler) -> Snapshot {
    let mut snap = Snapshot {
        tasks_finished: s.counters.finished,
        tasks_failed: s.counters.failed,
        tasks_retried: s.counters.retried,
        objects: s.objects.len() as u64,
        // Drivers only: every worker also holds a session for the tasks its tasks submit.
        sessions: s.sessions.values().filter(|s| s.worker.is_none()).count() as u64,
        jobs: s.job_views(),
        ..Snapshot::default()
    };
    for t in s.tasks.values() {
        match t.state {
            TaskState::Waiting { .. } => snap.tasks_waiting += 1,
            TaskState::Pending => snap.tasks_pending += 1,
            TaskState::Running { .. } | TaskState::Cancelled { .. } => snap.tasks_running += 1,
        }
    }
    let mut max_slots = 1u64;
    for w in s.workers.values() {
        let busy = u64::from(w.busy_slots.min(w.info.slots));
        snap.slots_busy += busy;
        snap.slots_free += u64::from(w.info.slots) - busy;
        max_slots = max_slots.max(u64::from(w.info.slots));
        match w.activity() {
            Activity::Draining | Activity::Drained => snap.workers_draining += 1,
            Activity::Idle => snap.workers_idle += 1,
            Activity::Busy => snap.workers_busy += 1,
        }
        snap.store_memory_bytes += w.store.memory_bytes;
        snap.store_spilled_bytes += w.store.spilled_bytes;
    }
    for a in s.actors.values() {
        match a.state {
            ActorState::Alive { .. } => snap.actors_alive += 1,
            ActorState::Creating | ActorState::Restarting => snap.actors_restarting += 1,
            ActorState::Dead => snap.actors_dead += 1,
        }
    }
    let demand: u64 = s
        .tasks
        .values()
        .filter(|t| !matches!(t.state, TaskState::Waiting { .. }))
        .map(|t| u64::from(t.slots()))
        .sum();
    let leased = s.leases.slots_by_worker();
    let demand = demand + leased.values().sum::<u64>();
    let actor_workers = s.actors.values().filter(|a| !a.is_dead()).count() as u64;
    demand_by_group(s, &mut snap);
    snap.desired_workers = demand.div_ceil(max_slots).max(u64::from(actor_workers > 0));
    snap
}

/// Most pending-demand shapes a [`Snapshot`] keeps apart.
pub const MAX_DEMAND_SHAPES: usize = 64;

/// Fills the per-group demand, the pending demand by shape and the busy workers of `snap`.
fn demand_by_group(s: &Scheduler, snap: &mut Snapshot) {
    let group_of = |worker: &WorkerId| s.workers.get(worker).map(|w| w.info.group.clone());
    snap.demand_by_group.insert(String::new(), 0);
    for w in s.workers.values() {
        if w.activity() == Activity::Busy {
            *snap.busy_by_group.entry(w.info.group.clone()).or_default() += 1;
        }
    }
    let mut shapes: BTreeMap<(u32, String), u64> = BTreeMap::new();
    for t in s.tasks.values() {
        let slots = u64::from(t.slots());
        match &t.state {
            TaskState::Waiting { .. } => {}
            TaskState::Running { worker } | TaskState::Cancelled { worker } => {
                *snap
                    .demand_by_group
                    .entry(group_of(worker).unwrap_or_default())
                    .or_default() += slots;
            }
            TaskState::Pending => {
                let resources = flotilla_proto::contract::format_resources(
                    t.custom().iter().map(|(k, v)| (k.as_str(), *v)),
                );
                *shapes.entry((t.slots(), resources)).or_default() += slots;
            }
        }
    }
    if shapes.len() > MAX_DEMAND_SHAPES {
        // Task options are the programs' to choose: past the bound the least demand is folded.
        let plain = (1, String::new());
        let mut folded = shapes.remove(&plain).unwrap_or(0);
        let mut by_demand: Vec<((u32, String), u64)> = shapes.into_iter().collect();
        by_demand.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        folded += by_demand
            .drain(MAX_DEMAND_SHAPES - 1..)
            .map(|(_, slots)| slots)
            .sum::<u64>();
        shapes = by_demand.into_iter().collect();
        shapes.insert(plain, folded);
    }
    snap.pending_by_shape = shapes;
    // A leased slot is taken as a running task's is.
    for (worker, slots) in s.leases.slots_by_worker() {
        *snap
            .demand_by_group
            .entry(group_of(&worker).unwrap_or_default())
            .or_default() += slots;
    }
    for a in s.actors.values() {
        if let ActorState::Alive { worker } = &a.state {
            let slots = u64::from(a.create.options.slots);
            *snap
                .demand_by_group
                .entry(group_of(worker).unwrap_or_default())
                .or_default() += slots;
        }
    }
}

/// Every worker, by id.
pub(super) fn worker_views(s: &Scheduler) -> Vec<WorkerView> {
    let mut v: Vec<WorkerView> = s
        .workers
        .iter()
        .map(|(id, w)| WorkerView {
            id: *id,
            name: w.info.name.clone(),
            address: w.info.address.clone(),
            http_address: w.info.http_address.clone(),
            node: w.info.node.clone(),
            state: w.activity().into(),
            slots: w.info.slots,
            busy_slots: w.busy_slots.min(w.info.slots),
            store: w.store.into(),
            program: w.info.program.clone(),
            group: w.info.group.clone(),
        })
        .collect();
    v.sort_by_key(|w| w.id);
    v
}
