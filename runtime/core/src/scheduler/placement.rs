//! Placement: the ready queue, checks against the workers' registries, picking a worker (data
//! locality, free slots, prefetch by task length), and dispatch.

use crate::ErrorKind;
use std::collections::{HashMap, VecDeque};

use super::{
    objects::{Object, ObjectValue},
    task_def::{TaskDef, TaskKind},
    tasks::TaskState,
    workers::{WorkerInfo, WorkerState},
    Output, Scheduler,
};
use crate::ids::{ObjectId, WorkerId};

/// Functions whose runs average less than this are short: workers may queue many of them, so a
/// round trip to the head never leaves a slot idle.
const SHORT_TASK_MICROS: f64 = 1000.0;
/// Tasks per slot a worker may hold of a short function.
const SHORT_PREFETCH_PER_SLOT: u32 = 32;
/// How many tasks in a row may fit nowhere before a scheduling pass stops looking.
const MAX_UNPLACED_SCAN: usize = 64;

/// Average run time per function, exponentially weighted, in microseconds.
#[derive(Debug, Default)]
pub(super) struct RunTimes(HashMap<String, f64>);

impl RunTimes {
    pub(super) fn record(&mut self, function: &str, micros: u64) {
        let sample = micros as f64;
        match self.0.get_mut(function) {
            Some(avg) => *avg = 0.8 * *avg + 0.2 * sample,
            None => {
                self.0.insert(function.to_string(), sample);
            }
        }
    }

    /// Whether the function's runs are short on average (unknown ones are not).
    fn is_short(&self, function: &str) -> bool {
        self.0
            .get(function)
            .is_some_and(|avg| *avg < SHORT_TASK_MICROS)
    }
}

/// Picks a registry table (functions or actor classes) out of a worker's description.
type RegistryTable = fn(&WorkerInfo) -> &HashMap<String, String>;

impl Scheduler {
    /// Places ready tasks on workers with room, in queue order.
    pub(super) fn place_tasks(&mut self) {
        if self.queue.is_empty() || self.workers.is_empty() {
            return;
        }
        let mut skipped = VecDeque::new();
        // Tasks that would fit an idle worker but not now; tasks no live worker could ever run
        // (waiting for one to join) do not count, so they never hold up the queue behind them.
        let mut blocked = 0;
        while let Some(id) = self.queue.pop_front() {
            if !self.has_room_anywhere() || blocked >= MAX_UNPLACED_SCAN {
                self.queue.push_front(id);
                break;
            }
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if task.state != TaskState::Pending {
                continue;
            }
            if let Err((kind, msg)) = self.check_registry(&task.def) {
                self.fail_task(id, kind, msg);
                continue;
            }
            if !self.args_ready(id) {
                continue;
            }
            match self.pick_worker(id) {
                Some(worker) => self.dispatch(id, worker),
                None => {
                    if self.fits_some_worker(id) {
                        blocked += 1;
                    }
                    skipped.push_back(id);
                }
            }
        }
        // Tasks that fit nowhere now keep their place at the front.
        while let Some(id) = skipped.pop_back() {
            self.queue.push_front(id);
        }
        self.revoke_leases_for_waiting();
    }

    /// Checks queued tasks against the workers' registries once workers exist.
    pub(super) fn revalidate_queue(&mut self) {
        let queued: Vec<ObjectId> = self.queue.iter().copied().collect();
        for id in queued {
            if let Some(task) = self.tasks.get(&id) {
                if let Err((kind, msg)) = self.check_registry(&task.def) {
                    self.fail_task(id, kind, msg);
                }
            }
        }
    }

    /// Unknown functions and mismatched signatures fail at once when workers exist.
    fn check_registry(&self, def: &TaskDef) -> Result<(), (ErrorKind, String)> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let (name, table_of, what): (&str, RegistryTable, &str) = match &def.kind {
            TaskKind::Function(f) => (f, |w| &w.functions, "function"),
            TaskKind::CreateActor(c) => (&c.class, |w| &w.classes, "actor class"),
            TaskKind::ActorCall { .. } => return Ok(()),
        };
        let mut programs: Vec<String> = Vec::new();
        let mut signatures: Vec<String> = Vec::new();
        for w in self.workers.values() {
            match table_of(&w.info).get(name) {
                Some(sig) if def.signature.is_empty() || *sig == def.signature => return Ok(()),
                Some(sig) => signatures.push(sig.clone()),
                None => {}
            }
            let p = format!("{} (build {})", w.info.program, w.info.build_id);
            if !programs.contains(&p) {
                programs.push(p);
            }
        }
        if let Some(sig) = signatures.first() {
            return Err((
                ErrorKind::TypeMismatch,
                format!(
                    "{what} {name} has signature `{}` in the caller but `{sig}` on the workers ({})",
                    def.signature,
                    programs.join(", ")
                ),
            ));
        }
        Err((
            ErrorKind::UnknownFunction,
            format!(
                "{what} {name} is not registered on any worker; the workers run {}",
                programs.join(", ")
            ),
        ))
    }

    /// Whether some live worker could run the task once idle (enough slots and resources).
    fn fits_some_worker(&self, id: ObjectId) -> bool {
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        self.workers.values().any(|w| {
            w.state == WorkerState::Active
                && task.slots() <= w.info.slots
                && task
                    .custom()
                    .iter()
                    .all(|(k, v)| w.info.custom.get(k).copied().unwrap_or(0) >= *v)
        })
    }

    /// Whether a ready task's arguments are all still there. An argument lost since it became
    /// ready (and being rebuilt) sends the task back to waiting; a failed one fails the task.
    pub(super) fn args_ready(&mut self, id: ObjectId) -> bool {
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        let mut pending = false;
        let mut failed = None;
        for dep in &task.deps {
            match self.objects.get(dep).map(|o| &o.value) {
                Some(ObjectValue::Pending) => pending = true,
                Some(ObjectValue::Failed(f)) => {
                    failed = Some(format!(
                        "an argument of {} failed: {}",
                        task.name, f.message
                    ));
                    break;
                }
                _ => {}
            }
        }
        if let Some(msg) = failed {
            self.fail_task(id, ErrorKind::DependencyFailed, msg);
            return false;
        }
        if pending {
            self.requeue(id);
        }
        !pending
    }

    /// Whether some worker could take a task now, if it were the shortest kind.
    fn has_room_anywhere(&self) -> bool {
        self.workers.values().any(|w| {
            let deepest = self.prefetch.max(SHORT_PREFETCH_PER_SLOT * w.info.slots);
            w.state == WorkerState::Active && w.busy_slots < w.capacity(deepest)
        })
    }

    /// The best worker with room for the task: data locality first, then free slots, then fewer
    /// actors, then the lower id.
    fn pick_worker(&self, id: ObjectId) -> Option<WorkerId> {
        let task = &self.tasks[&id];
        let function = task.def.function();
        let short = function.is_some_and(|f| self.run_times.is_short(f));
        let class = match &task.def.kind {
            TaskKind::CreateActor(c) => Some(c.class.as_str()),
            _ => None,
        };
        // Bytes of arguments each worker already holds.
        let mut local_bytes: HashMap<WorkerId, u64> = HashMap::new();
        for dep in &task.deps {
            if let Some(Object {
                value: ObjectValue::Stored { size, locations },
                ..
            }) = self.objects.get(dep)
            {
                for l in locations {
                    *local_bytes.entry(l.worker).or_default() += size;
                }
            }
        }
        let slots = task.slots();
        let mut best: Option<(WorkerId, (u64, i64, u32))> = None;
        for (wid, w) in &self.workers {
            if w.state != WorkerState::Active {
                continue;
            }
            if function.is_some_and(|f| !w.info.functions.contains_key(f))
                || class.is_some_and(|c| !w.info.classes.contains_key(c))
            {
                continue;
            }
            let prefetch = if short {
                self.prefetch.max(SHORT_PREFETCH_PER_SLOT * w.info.slots)
            } else {
                self.prefetch
            };
            if slots > w.info.slots + w.lent_slots || w.busy_slots + slots > w.capacity(prefetch) {
                continue;
            }
            if task
                .custom()
                .iter()
                .any(|(k, v)| w.custom_free.get(k).copied().unwrap_or(0) < *v)
            {
                continue;
            }
            let free = i64::from(w.info.slots + w.lent_slots) - i64::from(w.busy_slots);
            let score = (
                local_bytes.get(wid).copied().unwrap_or(0),
                free,
                u32::MAX - w.actors.len() as u32,
            );
            let better = match &best {
                None => true,
                Some((bid, bscore)) => score > *bscore || (score == *bscore && wid < bid),
            };
            if better {
                best = Some((*wid, score));
            }
        }
        best.map(|(w, _)| w)
    }

    /// Runs a ready task on `worker`, taking its slots and resources there.
    pub(super) fn dispatch(&mut self, id: ObjectId, worker: WorkerId) {
        let task = self.tasks.get_mut(&id).expect("dispatch of a live task");
        task.state = TaskState::Running { worker };
        let slots = task.slots();
        let w = self
            .workers
            .get_mut(&worker)
            .expect("dispatch to a live worker");
        w.running.insert(id);
        w.busy_slots += slots;
        for (k, v) in task.custom() {
            if let Some(free) = w.custom_free.get_mut(k) {
                *free = free.saturating_sub(*v);
            }
        }
        let restarts = if task.is_actor_creation() {
            self.actors.get(&id).map_or(0, |a| a.restarts)
        } else {
            0
        };
        self.emit(Output::Run {
            worker,
            task: id,
            restarts,
        });
    }

    /// Gives back the slots and resources a task held on `worker`.
    pub(super) fn release_slots(&mut self, worker: WorkerId, id: ObjectId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let blocked = std::mem::take(&mut task.blocked);
        let slots = task.slots();
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.running.remove(&id) {
                w.busy_slots = w.busy_slots.saturating_sub(slots);
                if blocked {
                    w.lent_slots = w.lent_slots.saturating_sub(slots);
                }
                for (k, v) in task.custom() {
                    *w.custom_free.entry(k.clone()).or_default() += v;
                }
            }
        }
    }
}
