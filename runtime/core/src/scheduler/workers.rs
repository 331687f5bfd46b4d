//! The worker pool: registration, capacity, and what a lost worker takes with it.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use super::Scheduler;
use crate::ids::{ObjectId, WorkerId};

/// A worker as registration describes it.
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    /// The worker's unique name (its pod name on Kubernetes).
    pub name: String,
    /// Its gRPC address, for peer-to-peer object fetches.
    pub address: String,
    /// Its HTTP address, for bulk object transfer (may be empty).
    pub http_address: String,
    /// The node it runs on.
    pub node: String,
    /// Parallel task slots.
    pub slots: u32,
    /// Named custom resources.
    pub custom: HashMap<String, u64>,
    /// Registered functions: name → signature.
    pub functions: HashMap<String, String>,
    /// Registered actor classes: name → constructor signature.
    pub classes: HashMap<String, String>,
    /// The program the worker runs.
    pub program: String,
    /// A fingerprint of the program's registry.
    pub build_id: String,
    /// The worker group.
    pub group: String,
}

/// Why a worker could not register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    Active,
    /// Takes no new work; ends as `Drained` when empty, or at `deadline`.
    Draining {
        deadline: Instant,
    },
    /// Drained: takes no work, waits for its process to go away.
    Drained,
}

/// What a worker is doing, as status and metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activity {
    /// Active, running no task and hosting no actor.
    Idle,
    /// Active, running tasks or hosting actors.
    Busy,
    Draining,
    Drained,
}

/// A worker's object store, as it last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct StoreStats {
    pub(super) memory_bytes: u64,
    pub(super) spilled_bytes: u64,
    pub(super) objects: u64,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) info: WorkerInfo,
    pub(super) state: WorkerState,
    /// Slots taken by tasks dispatched and not yet finished.
    pub(super) busy_slots: u32,
    /// Slots lent back by tasks blocked in `get`.
    pub(super) lent_slots: u32,
    /// Custom resources not taken by running tasks.
    pub(super) custom_free: HashMap<String, u64>,
    /// Tasks dispatched there and not yet finished.
    pub(super) running: HashSet<ObjectId>,
    /// Actors alive there.
    pub(super) actors: HashSet<ObjectId>,
    pub(super) store: StoreStats,
    /// Leases out on it (each holds slots as a running task does).
    pub(super) leases: u32,
    /// It said it exits to stop a cancelled task that would not stop: when it goes, its running
    /// tasks are not at fault, and their retries are not used up.
    pub(super) exiting: bool,
}

impl Worker {
    /// Slots it may fill: its own, those lent by blocked tasks, and `prefetch` more.
    pub(super) fn capacity(&self, prefetch: u32) -> u32 {
        self.info.slots + self.lent_slots + prefetch
    }

    pub(super) fn activity(&self) -> Activity {
        match self.state {
            WorkerState::Draining { .. } => Activity::Draining,
            WorkerState::Drained => Activity::Drained,
            WorkerState::Active
                if self.running.is_empty() && self.actors.is_empty() && self.leases == 0 =>
            {
                Activity::Idle
            }
            WorkerState::Active => Activity::Busy,
        }
    }
}

impl Scheduler {
    /// Adds a worker to the pool and gives queued tasks a chance on it.
    pub(super) fn register_worker(&mut self, info: WorkerInfo) -> Result<WorkerId, RegisterError> {
        if info.name.is_empty() {
            return Err(RegisterError("worker name is empty".into()));
        }
        if let Some(existing) = self.worker_names.get(&info.name) {
            let addr = &self.workers[existing].info.address;
            return Err(RegisterError(format!(
                "a worker named {:?} is already registered (at {addr}); worker names must be unique",
                info.name
            )));
        }
        if info.slots == 0 {
            return Err(RegisterError("a worker needs at least one slot".into()));
        }
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        self.worker_names.insert(info.name.clone(), id);
        self.workers.insert(
            id,
            Worker {
                custom_free: info.custom.clone(),
                info,
                state: WorkerState::Active,
                busy_slots: 0,
                lent_slots: 0,
                running: HashSet::new(),
                actors: HashSet::new(),
                store: StoreStats::default(),
                leases: 0,
                exiting: false,
            },
        );
        // Tasks that waited for any worker may now be checked against the registry.
        self.revalidate_queue();
        self.place_tasks();
        Ok(id)
    }

    /// Removes a worker: its tasks are retried, its sole objects rebuilt, its actors restarted.
    pub(super) fn remove_worker(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.worker_names.remove(&w.info.name);
        // Its leases end; their holders retry the tasks that ran on them.
        self.end_leases(|l| l.worker == worker);
        let was_draining = matches!(w.state, WorkerState::Draining { .. });
        let mut task_ids: Vec<ObjectId> = w.running.iter().copied().collect();
        task_ids.sort();
        let mut creations = HashSet::new();
        for t in task_ids {
            if self.tasks.get(&t).is_some_and(|t| t.is_actor_creation()) {
                // The actor never came up there: restart or bury it below.
                creations.insert(t);
                self.actor_creation_lost(t, &w.info.name);
            }
        }
        // (Creations were restarted or buried above; retrying them too would revive dead actors.)
        let mut running: Vec<ObjectId> = w
            .running
            .into_iter()
            .filter(|t| !creations.contains(t))
            .collect();
        running.sort();
        for task_id in running {
            self.task_lost(task_id, &w.info.name, w.exiting);
        }
        for id in self.drop_locations(worker) {
            self.object_lost(id, &w.info.name);
        }
        let mut actors: Vec<ObjectId> = w.actors.into_iter().collect();
        actors.sort();
        for actor in actors {
            self.actor_worker_died(actor, &format!("its worker {} died", w.info.name));
        }
        if was_draining {
            self.drain_lost(worker, &w.info.name);
        }
        self.place_tasks();
    }
}
