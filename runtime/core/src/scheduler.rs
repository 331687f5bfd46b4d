//! The head's brain: tasks, objects, actors, workers and sessions as a state machine with no I/O.
//!
//! Every input is a method call (`submit`, `task_finished`, `worker_lost`, …); every output is an
//! [`Effect`] pushed to the outbox, which the gRPC layer drains and delivers. Time only enters
//! through the `now` arguments, so tests drive the scheduler deterministically.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;
use flotilla_proto::v1::{
    self as pb, arg, object_state, resolved_arg, task_error::Kind as ErrorKind, task_result,
    task_spec, worker_command, ObjectState, TaskError, TaskSpec,
};

use crate::ids::{ObjectId, SessionId, WorkerId};

/// Retries after a worker failure when the caller does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// How often a task may be requeued because an argument vanished while it was being fetched.
const MAX_REFETCHES: u32 = 8;
/// Functions whose runs average less than this are short: workers may queue many of them, so a
/// round trip to the head never leaves a slot idle.
const SHORT_TASK_MICROS: f64 = 1000.0;
/// Tasks per slot a worker may hold of a short function.
const SHORT_PREFETCH_PER_SLOT: u32 = 32;
/// How many tasks in a row may fit nowhere before a scheduling pass stops looking.
const MAX_UNPLACED_SCAN: usize = 64;

/// Something the I/O layer must deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A command for a worker.
    ToWorker(WorkerId, worker_command::Command),
    /// The state of an object, for a session that owns or awaits it.
    ToSession(SessionId, ObjectState),
    /// The answer to an actor lookup.
    ActorFound(SessionId, pb::ActorFound),
    /// A drain finished; `message` says how.
    Drained {
        /// The worker that was drained.
        worker: WorkerId,
        /// How it ended: emptied by itself (its tasks finished and its objects were copied), the
        /// deadline passed first (its running tasks were moved elsewhere), or it went away.
        outcome: pb::DrainOutcome,
        /// What happened to its work.
        message: String,
    },
}

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
enum WorkerState {
    Active,
    Draining {
        deadline: Instant,
    },
    /// Drained: takes no work, waits for its process to go away.
    Drained,
}

#[derive(Debug)]
struct Worker {
    info: WorkerInfo,
    state: WorkerState,
    /// Slots taken by tasks dispatched and not yet finished.
    busy_slots: u32,
    /// Slots lent back by tasks blocked in `get`.
    lent_slots: u32,
    custom_free: HashMap<String, u64>,
    running: HashSet<ObjectId>,
    actors: HashSet<ObjectId>,
    store: pb::StoreStats,
}

impl Worker {
    fn capacity(&self, prefetch: u32) -> u32 {
        self.info.slots + self.lent_slots + prefetch
    }

    fn max_capacity(&self, prefetch: u32) -> u32 {
        self.capacity(prefetch.max(SHORT_PREFETCH_PER_SLOT * self.info.slots))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Waiting for `missing` arguments.
    Waiting { missing: usize },
    /// Ready, in the queue (or an actor's queue).
    Pending,
    /// Dispatched to a worker.
    Running { worker: WorkerId },
    /// Cancelled while running; its result will be dropped.
    Cancelled { worker: WorkerId },
}

#[derive(Debug)]
struct Task {
    spec: TaskSpec,
    owner: SessionId,
    state: TaskState,
    attempt: u32,
    retries_left: u32,
    refetches: u32,
    /// Distinct object arguments; each holds one reference while the task lives.
    deps: Vec<ObjectId>,
    slots: u32,
    custom: HashMap<String, u64>,
    name: String,
    /// Waiting in `get` inside its worker, its slots lent to other tasks.
    blocked: bool,
}

impl Task {
    fn actor(&self) -> Option<ObjectId> {
        match &self.spec.kind {
            Some(task_spec::Kind::ActorCall(call)) => Some(ObjectId(call.actor)),
            _ => None,
        }
    }
    fn is_actor_creation(&self) -> bool {
        matches!(self.spec.kind, Some(task_spec::Kind::CreateActor(_)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ObjectValue {
    Pending,
    Inline(Bytes),
    Stored { size: u64, locations: Vec<WorkerId> },
    Failed(TaskError),
}

#[derive(Debug)]
struct Object {
    value: ObjectValue,
    /// Holders: the owner until it releases, plus every live task that takes it as an argument,
    /// plus every object whose lineage needs it.
    refs: u32,
    owner: SessionId,
    owner_holds: bool,
    subscribers: Vec<SessionId>,
    /// Tasks waiting for this object.
    dependents: Vec<ObjectId>,
    /// The spec of the task that produced it, to rebuild it when lost.
    lineage: Option<TaskSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActorState {
    Creating,
    Alive { worker: WorkerId },
    Restarting,
    Dead,
}

#[derive(Debug)]
struct Actor {
    class: String,
    name: String,
    owner: SessionId,
    detached: bool,
    max_restarts: i32,
    restarts: u32,
    state: ActorState,
    create_spec: TaskSpec,
    /// Calls in arrival order, not yet dispatched.
    queue: VecDeque<ObjectId>,
    inflight: HashSet<ObjectId>,
    death: String,
}

#[derive(Debug, Default)]
struct Session {
    worker: Option<String>,
}

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
    /// Workers being drained.
    pub workers_draining: u64,
    /// Actors alive.
    pub actors_alive: u64,
    /// Actors restarting.
    pub actors_restarting: u64,
    /// Actors dead.
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
}

/// A worker as `flotilla status` shows it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Worker id.
    pub id: WorkerId,
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// HTTP address.
    pub http_address: String,
    /// The node it runs on.
    pub node: String,
    /// Idle, busy, draining or drained.
    pub state: pb::WorkerState,
    /// Slots.
    pub slots: u32,
    /// Busy slots.
    pub busy_slots: u32,
    /// Store statistics last reported.
    pub store: pb::StoreStats,
    /// Program.
    pub program: String,
    /// Group.
    pub group: String,
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    workers: HashMap<WorkerId, Worker>,
    worker_names: HashMap<String, WorkerId>,
    next_worker: u32,
    sessions: HashMap<SessionId, Session>,
    next_session: u32,
    tasks: HashMap<ObjectId, Task>,
    objects: HashMap<ObjectId, Object>,
    actors: HashMap<ObjectId, Actor>,
    named_actors: HashMap<String, ObjectId>,
    queue: VecDeque<ObjectId>,
    /// Tasks a worker may hold beyond its slots when their length is unknown or long.
    prefetch: u32,
    /// Average run time per function (exponentially weighted), in microseconds.
    run_micros: HashMap<String, f64>,
    finished: u64,
    failed: u64,
    retried: u64,
    /// Finished and failed runs by task name (the function, method, or the caller's name).
    by_name: std::collections::BTreeMap<String, (u64, u64)>,
    outbox: Vec<Effect>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(2)
    }
}

impl Scheduler {
    /// A scheduler that lets each worker hold `prefetch` tasks beyond its slots.
    pub fn new(prefetch: u32) -> Self {
        Scheduler {
            workers: HashMap::new(),
            worker_names: HashMap::new(),
            next_worker: 1,
            sessions: HashMap::new(),
            next_session: 1,
            tasks: HashMap::new(),
            objects: HashMap::new(),
            actors: HashMap::new(),
            named_actors: HashMap::new(),
            queue: VecDeque::new(),
            prefetch,
            run_micros: HashMap::new(),
            finished: 0,
            failed: 0,
            retried: 0,
            by_name: std::collections::BTreeMap::new(),
            outbox: Vec::new(),
        }
    }

    /// Counts a task's final outcome, in total and under its name.
    fn count_outcome(&mut self, id: ObjectId, finished: bool) {
        if finished {
            self.finished += 1;
        } else {
            self.failed += 1;
        }
        if let Some(task) = self.tasks.get(&id) {
            let entry = match self.by_name.get_mut(&task.name) {
                Some(e) => e,
                None => self.by_name.entry(task.name.clone()).or_default(),
            };
            if finished {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    /// Finished and failed runs by task name.
    pub fn runs_by_name(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.by_name
            .iter()
            .map(|(n, (ok, failed))| (n.as_str(), *ok, *failed))
    }

    /// Takes the effects produced so far.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.outbox)
    }

    /// Takes the effects produced so far into `out`, keeping both allocations.
    pub fn drain_effects_into(&mut self, out: &mut Vec<Effect>) {
        out.append(&mut self.outbox);
    }

    // ------------------------------------------------------------------ workers

    /// Registers a worker; a name already registered is refused.
    pub fn add_worker(&mut self, info: WorkerInfo) -> Result<WorkerId, RegisterError> {
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
                store: pb::StoreStats::default(),
            },
        );
        // Tasks that waited for any worker may now be checked against the registry.
        self.revalidate_queue();
        self.schedule();
        Ok(id)
    }

    /// The id of a worker by name.
    pub fn worker_by_name(&mut self, name: &str) -> Option<WorkerId> {
        self.worker_names.get(name).copied()
    }

    /// Records a worker's store statistics.
    pub fn store_stats(&mut self, worker: WorkerId, stats: pb::StoreStats) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.store = stats;
        }
    }

    /// A worker is gone (its connection dropped or it was killed): retry its tasks elsewhere,
    /// rebuild the objects only it held, restart its actors.
    pub fn worker_lost(&mut self, worker: WorkerId) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.worker_names.remove(&w.info.name);
        let was_draining = matches!(w.state, WorkerState::Draining { .. });
        let mut task_ids: Vec<ObjectId> = w.running.iter().copied().collect();
        task_ids.sort();
        let mut creations = HashSet::new();
        for t in task_ids {
            if let Some(task) = self.tasks.get(&t) {
                if task.is_actor_creation() {
                    // The actor never came up there: restart or bury it below.
                    creations.insert(t);
                    self.actor_creation_lost(t, &w.info.name);
                }
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
            self.task_lost(task_id, &w.info.name);
        }
        // Objects whose only copy was there.
        let mut lost = Vec::new();
        for (id, obj) in self.objects.iter_mut() {
            if let ObjectValue::Stored { locations, .. } = &mut obj.value {
                if let Some(pos) = locations.iter().position(|l| *l == worker) {
                    locations.remove(pos);
                    if locations.is_empty() {
                        lost.push(*id);
                    }
                }
            }
        }
        lost.sort();
        for id in lost {
            self.object_lost(id, &w.info.name);
        }
        let mut actors: Vec<ObjectId> = w.actors.into_iter().collect();
        actors.sort();
        for actor in actors {
            self.actor_worker_died(actor, &format!("its worker {} died", w.info.name));
        }
        if was_draining {
            self.outbox.push(Effect::Drained {
                worker,
                outcome: pb::DrainOutcome::WorkerLost,
                message: format!("worker {} went away while draining", w.info.name),
            });
        }
        self.schedule();
    }

    fn task_lost(&mut self, task_id: ObjectId, worker_name: &str) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if let TaskState::Cancelled { .. } = task.state {
            self.remove_task(task_id);
            return;
        }
        if let Some(actor) = task.actor() {
            let method = task.name.clone();
            if let Some(a) = self.actors.get_mut(&actor) {
                a.inflight.remove(&task_id);
            }
            self.fail_task(
                task_id,
                ErrorKind::ActorDied,
                format!("the actor's worker {worker_name} died while running {method}"),
            );
            return;
        }
        if task.retries_left > 0 {
            task.retries_left -= 1;
            task.attempt += 1;
            self.retried += 1;
            self.requeue(task_id);
        } else {
            let name = task.name.clone();
            self.fail_task(
                task_id,
                ErrorKind::WorkerDied,
                format!("worker {worker_name} died while running {name} and no retries were left"),
            );
        }
    }

    /// Puts a task back to waiting or pending, depending on its arguments.
    fn requeue(&mut self, task_id: ObjectId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let deps = task.deps.clone();
        let mut missing = 0;
        for dep in &deps {
            let obj = self
                .objects
                .get_mut(dep)
                .expect("a live task holds its arguments");
            if matches!(obj.value, ObjectValue::Pending) {
                missing += 1;
                if !obj.dependents.contains(&task_id) {
                    obj.dependents.push(task_id);
                }
            }
        }
        let task = self.tasks.get_mut(&task_id).expect("checked above");
        if missing > 0 {
            task.state = TaskState::Waiting { missing };
        } else {
            task.state = TaskState::Pending;
            self.enqueue_ready(task_id);
        }
    }

    fn actor_creation_lost(&mut self, actor: ObjectId, worker_name: &str) {
        self.actor_worker_died(
            actor,
            &format!("its worker {worker_name} died while it was being created"),
        );
    }

    fn object_lost(&mut self, id: ObjectId, worker_name: &str) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        let rebuildable = obj
            .lineage
            .as_ref()
            .is_some_and(|spec| matches!(spec.kind, Some(task_spec::Kind::Function(_))));
        if obj.refs > 0 && rebuildable && !self.tasks.contains_key(&id) {
            // Rebuild from lineage: run the producing task again.
            obj.value = ObjectValue::Pending;
            let spec = obj.lineage.clone().expect("rebuildable has lineage");
            let owner = obj.owner;
            self.retried += 1;
            self.insert_task(spec, owner, false);
        } else if obj.refs > 0 {
            let err = TaskError {
                kind: ErrorKind::ObjectLost as i32,
                task: String::new(),
                message: format!(
                    "object {id} was lost with worker {worker_name} and cannot be rebuilt (it was put, not computed)"
                ),
            };
            self.set_object(id, ObjectValue::Failed(err));
        } else {
            self.objects.remove(&id);
        }
    }

    // ------------------------------------------------------------------ sessions

    /// Opens a driver session and returns its id (the high bits of the ids it mints).
    pub fn open_session(&mut self, worker: Option<String>) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(id, Session { worker });
        id
    }

    /// A session ended: cancel its tasks, free its objects, kill its actors that are not detached.
    pub fn close_session(&mut self, session: SessionId) {
        if self.sessions.remove(&session).is_none() {
            return;
        }
        let mut owned_tasks: Vec<ObjectId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.owner == session && !t.is_actor_creation())
            .map(|(id, _)| *id)
            .collect();
        owned_tasks.sort();
        for id in owned_tasks {
            self.cancel_task(id, "its driver went away");
        }
        let mut owned_actors: Vec<ObjectId> = self
            .actors
            .iter()
            .filter(|(_, a)| a.owner == session && !a.detached && a.state != ActorState::Dead)
            .map(|(id, _)| *id)
            .collect();
        owned_actors.sort();
        for id in owned_actors {
            self.kill_actor(id, "its driver went away");
        }
        let mut owned: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, o)| o.owner == session && o.owner_holds)
            .map(|(id, _)| *id)
            .collect();
        owned.sort();
        for id in owned {
            self.release(session, id);
        }
        for obj in self.objects.values_mut() {
            obj.subscribers.retain(|s| *s != session);
        }
        self.schedule();
    }

    // ------------------------------------------------------------------ objects

    /// A session put a value: inline bytes, or stored on a worker.
    pub fn put(&mut self, session: SessionId, id: ObjectId, value: pb::put_object::Value) {
        // Ids are minted by their session; anything else would overwrite another's object.
        if id.session() != session || self.objects.contains_key(&id) || self.tasks.contains_key(&id)
        {
            self.outbox.push(Effect::ToSession(
                session,
                error_state(
                    id,
                    "put",
                    ErrorKind::Invalid,
                    format!("object id {id} is not this session's to create"),
                ),
            ));
            return;
        }
        let value = match value {
            pb::put_object::Value::InlineValue(b) => ObjectValue::Inline(b),
            pb::put_object::Value::Stored(s) => {
                let locations = s
                    .locations
                    .iter()
                    .filter_map(|l| {
                        let w = WorkerId(l.worker);
                        self.workers.contains_key(&w).then_some(w)
                    })
                    .collect::<Vec<_>>();
                if locations.is_empty() {
                    ObjectValue::Failed(TaskError {
                        kind: ErrorKind::ObjectLost as i32,
                        task: String::new(),
                        message: format!("object {id} was put on a worker that is gone"),
                    })
                } else {
                    ObjectValue::Stored {
                        size: s.size,
                        locations,
                    }
                }
            }
        };
        self.objects.insert(
            id,
            Object {
                value: ObjectValue::Pending,
                refs: 1,
                owner: session,
                owner_holds: true,
                subscribers: Vec::new(),
                dependents: Vec::new(),
                lineage: None,
            },
        );
        self.set_object(id, value);
        self.schedule();
    }

    /// The session dropped its last reference to an object it owns.
    pub fn release(&mut self, session: SessionId, id: ObjectId) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        if obj.owner != session || !obj.owner_holds {
            return;
        }
        obj.owner_holds = false;
        self.decref(id);
    }

    /// Tell `session` when the object is ready (at once if it is).
    pub fn subscribe(&mut self, session: SessionId, id: ObjectId) {
        match self.objects.get_mut(&id) {
            Some(obj) if matches!(obj.value, ObjectValue::Pending) => {
                if !obj.subscribers.contains(&session) {
                    obj.subscribers.push(session);
                }
            }
            Some(_) => {
                let state = self.object_state(id).expect("the object is not pending");
                self.outbox.push(Effect::ToSession(session, state));
            }
            None => {
                let err = TaskError {
                    kind: ErrorKind::ObjectLost as i32,
                    task: String::new(),
                    message: format!("object {id} does not exist (it was freed, or never created)"),
                };
                self.outbox.push(Effect::ToSession(
                    session,
                    ObjectState {
                        object: id.0,
                        state: Some(object_state::State::Error(err)),
                    },
                ));
            }
        }
    }

    fn object_state(&self, id: ObjectId) -> Option<ObjectState> {
        let obj = self.objects.get(&id)?;
        let state = match &obj.value {
            ObjectValue::Pending => return None,
            ObjectValue::Inline(b) => object_state::State::InlineValue(b.clone()),
            ObjectValue::Stored { size, locations } => {
                object_state::State::Stored(self.stored(*size, locations))
            }
            ObjectValue::Failed(e) => object_state::State::Error(e.clone()),
        };
        Some(ObjectState {
            object: id.0,
            state: Some(state),
        })
    }

    fn stored(&self, size: u64, locations: &[WorkerId]) -> pb::StoredObject {
        pb::StoredObject {
            size,
            locations: locations
                .iter()
                .filter_map(|w| {
                    let worker = self.workers.get(w)?;
                    Some(pb::ObjectLocation {
                        worker: w.0,
                        address: worker.info.address.clone(),
                        node: worker.info.node.clone(),
                        shm_path: String::new(),
                        http_address: worker.info.http_address.clone(),
                    })
                })
                .collect(),
        }
    }

    /// A worker now holds a copy of an object (after a fetch or a drain copy).
    pub fn stored_copy(&mut self, worker: WorkerId, id: ObjectId) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        if let Some(obj) = self.objects.get_mut(&id) {
            if let ObjectValue::Stored { locations, .. } = &mut obj.value {
                if !locations.contains(&worker) {
                    locations.push(worker);
                }
            }
        } else {
            // Freed meanwhile: the copy is garbage.
            self.outbox.push(Effect::ToWorker(
                worker,
                worker_command::Command::Free(id.0),
            ));
        }
        self.check_drains();
    }

    fn set_object(&mut self, id: ObjectId, value: ObjectValue) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        obj.value = value;
        let dependents = std::mem::take(&mut obj.dependents);
        let mut subscribers = std::mem::take(&mut obj.subscribers);
        let owner = obj.owner;
        if obj.owner_holds && !subscribers.contains(&owner) {
            subscribers.push(owner);
        }
        let state = self.object_state(id).expect("value was just set");
        for s in subscribers {
            if self.sessions.contains_key(&s) {
                self.outbox.push(Effect::ToSession(s, state.clone()));
            }
        }
        let failed = matches!(self.objects[&id].value, ObjectValue::Failed(_));
        for t in dependents {
            let Some(task) = self.tasks.get_mut(&t) else {
                continue;
            };
            if failed {
                let name = task.name.clone();
                let cause = match &state.state {
                    Some(object_state::State::Error(e)) => e.message.clone(),
                    _ => String::new(),
                };
                self.fail_task(
                    t,
                    ErrorKind::DependencyFailed,
                    format!("an argument of {name} failed: {cause}"),
                );
                continue;
            }
            if let TaskState::Waiting { missing } = &mut task.state {
                *missing -= 1;
                if *missing == 0 {
                    task.state = TaskState::Pending;
                    self.enqueue_ready(t);
                }
            }
        }
        // Failing a dependent may have released the last reference and freed the object already.
        if self.objects.get(&id).is_some_and(|o| o.refs == 0) {
            self.free_object(id);
        }
    }

    fn decref(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.get_mut(&id) else {
            return;
        };
        obj.refs = obj.refs.saturating_sub(1);
        if obj.refs == 0 && !matches!(obj.value, ObjectValue::Pending) {
            self.free_object(id);
        }
    }

    fn free_object(&mut self, id: ObjectId) {
        let Some(obj) = self.objects.remove(&id) else {
            return;
        };
        // The last handle of an actor is gone: the actor goes too, unless it is detached.
        if self
            .actors
            .get(&id)
            .is_some_and(|a| !a.detached && a.state != ActorState::Dead)
        {
            self.kill_actor(id, "every handle to it was dropped");
        }
        if let ObjectValue::Stored { locations, .. } = &obj.value {
            for w in locations {
                self.outbox
                    .push(Effect::ToWorker(*w, worker_command::Command::Free(id.0)));
            }
        }
        // The lineage pinned the producing task's arguments.
        if let Some(spec) = &obj.lineage {
            // (Function outputs and actors pin their arguments for rebuilds and restarts.)
            for dep in distinct_deps(spec) {
                self.decref(dep);
            }
        }
        self.check_drains();
    }

    // ------------------------------------------------------------------ tasks

    /// A session submitted a task, an actor creation or an actor call.
    pub fn submit(&mut self, session: SessionId, spec: TaskSpec) {
        let id = ObjectId(spec.task);
        if id.session() != session || self.tasks.contains_key(&id) || self.objects.contains_key(&id)
        {
            self.outbox.push(Effect::ToSession(
                session,
                error_state(
                    id,
                    &spec_name(&spec),
                    ErrorKind::Invalid,
                    "task id already in use, or minted by another session".into(),
                ),
            ));
            return;
        }
        // Arguments that do not exist fail the task at once.
        for dep in distinct_deps(&spec) {
            if !self.objects.contains_key(&dep) {
                self.outbox.push(Effect::ToSession(
                    session,
                    error_state(
                        id,
                        &spec_name(&spec),
                        ErrorKind::ObjectLost,
                        format!("argument object {dep} does not exist (freed, or never created)"),
                    ),
                ));
                return;
            }
        }
        if let Some(task_spec::Kind::CreateActor(create)) = &spec.kind {
            if !create.name.is_empty() {
                if let Some(existing) = self.named_actors.get(&create.name) {
                    if self
                        .actors
                        .get(existing)
                        .is_some_and(|a| a.state != ActorState::Dead)
                    {
                        self.outbox.push(Effect::ToSession(
                            session,
                            error_state(
                                id,
                                &create.class,
                                ErrorKind::Invalid,
                                format!("an actor named {:?} already exists", create.name),
                            ),
                        ));
                        return;
                    }
                }
                self.named_actors.insert(create.name.clone(), id);
            }
            self.actors.insert(
                id,
                Actor {
                    class: create.class.clone(),
                    name: create.name.clone(),
                    owner: session,
                    detached: create.detached,
                    max_restarts: create.max_restarts,
                    restarts: 0,
                    state: ActorState::Creating,
                    create_spec: spec.clone(),
                    queue: VecDeque::new(),
                    inflight: HashSet::new(),
                    death: String::new(),
                },
            );
        }
        if let Some(task_spec::Kind::ActorCall(call)) = &spec.kind {
            let actor = ObjectId(call.actor);
            match self.actors.get(&actor) {
                None => {
                    self.outbox.push(Effect::ToSession(
                        session,
                        error_state(
                            id,
                            &call.method,
                            ErrorKind::ActorDied,
                            format!("no actor {actor} exists"),
                        ),
                    ));
                    return;
                }
                Some(a) if a.state == ActorState::Dead => {
                    let msg = format!("actor {} ({}) is dead: {}", actor, a.class, a.death);
                    self.outbox.push(Effect::ToSession(
                        session,
                        error_state(id, &call.method, ErrorKind::ActorDied, msg),
                    ));
                    return;
                }
                Some(_) => {}
            }
        }
        self.insert_task(spec, session, true);
        self.schedule();
    }

    /// Creates the task and its output object (unless rebuilding), wires up its arguments.
    fn insert_task(&mut self, spec: TaskSpec, owner: SessionId, new_object: bool) {
        let id = ObjectId(spec.task);
        let deps = distinct_deps(&spec);
        if let Some(dep) = deps.iter().find(|d| !self.objects.contains_key(d)) {
            let msg = format!(
                "argument object {dep} of {} no longer exists",
                spec_name(&spec)
            );
            if let Some(actor) = self.actors.get(&id).filter(|_| !new_object) {
                let _ = actor;
                self.actor_dead(id, msg);
            } else {
                self.set_object(
                    id,
                    ObjectValue::Failed(TaskError {
                        kind: ErrorKind::ObjectLost as i32,
                        task: spec_name(&spec),
                        message: msg,
                    }),
                );
            }
            return;
        }
        let pins = matches!(
            spec.kind,
            Some(task_spec::Kind::Function(_)) | Some(task_spec::Kind::CreateActor(_))
        );
        // No options at all (a plain `.remote()`) means the defaults, retries included: the
        // proto's zero value of max_retries would otherwise mean "never retry".
        let options = spec.options.clone().unwrap_or(pb::TaskOptions {
            max_retries: -1,
            ..Default::default()
        });
        let resources = options.resources.unwrap_or_default();
        let name = if options.name.is_empty() {
            spec_name(&spec)
        } else {
            options.name.clone()
        };
        let retries_left = if options.max_retries < 0 {
            DEFAULT_MAX_RETRIES
        } else {
            options.max_retries as u32
        };
        if new_object {
            self.objects.insert(
                id,
                Object {
                    value: ObjectValue::Pending,
                    refs: 1,
                    owner,
                    owner_holds: true,
                    subscribers: Vec::new(),
                    dependents: Vec::new(),
                    lineage: pins.then(|| spec.clone()),
                },
            );
            // The lineage pins the arguments while the output lives.
            if pins {
                for dep in &deps {
                    if let Some(o) = self.objects.get_mut(dep) {
                        o.refs += 1;
                    }
                }
            }
        }
        let mut missing = 0;
        for dep in &deps {
            let obj = self.objects.get_mut(dep).expect("arguments checked above");
            obj.refs += 1;
            if matches!(obj.value, ObjectValue::Pending) {
                missing += 1;
                obj.dependents.push(id);
            }
        }
        let is_actor_call = matches!(spec.kind, Some(task_spec::Kind::ActorCall(_)));
        let actor = match &spec.kind {
            Some(task_spec::Kind::ActorCall(call)) => Some(ObjectId(call.actor)),
            _ => None,
        };
        self.tasks.insert(
            id,
            Task {
                spec,
                owner,
                state: if missing > 0 {
                    TaskState::Waiting { missing }
                } else {
                    TaskState::Pending
                },
                attempt: 0,
                retries_left,
                refetches: 0,
                deps,
                slots: if is_actor_call {
                    0
                } else {
                    resources.slots.max(1)
                },
                custom: resources.custom,
                name,
                blocked: false,
            },
        );
        if let Some(actor) = actor {
            // Calls keep their order: every call joins the actor's queue, ready or not.
            self.actors
                .get_mut(&actor)
                .expect("checked by submit")
                .queue
                .push_back(id);
            self.pump_actor(actor);
        } else if missing == 0 {
            self.enqueue_ready(id);
        }
    }

    fn enqueue_ready(&mut self, id: ObjectId) {
        match self.tasks.get(&id).and_then(Task::actor) {
            Some(actor) => self.pump_actor(actor),
            None => self.queue.push_back(id),
        }
    }

    /// Checks queued tasks against the workers' registries once workers exist.
    fn revalidate_queue(&mut self) {
        let queued: Vec<ObjectId> = self.queue.iter().copied().collect();
        for id in queued {
            if let Some(task) = self.tasks.get(&id) {
                if let Err((kind, msg)) = self.check_registry(&task.spec) {
                    self.fail_task(id, kind, msg);
                }
            }
        }
    }

    /// Unknown functions and mismatched signatures fail at once when workers exist.
    fn check_registry(&self, spec: &TaskSpec) -> Result<(), (ErrorKind, String)> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let (name, table_of, what): (&str, RegistryTable, &str) = match &spec.kind {
            Some(task_spec::Kind::Function(f)) => (f, |w| &w.functions, "function"),
            Some(task_spec::Kind::CreateActor(c)) => (&c.class, |w| &w.classes, "actor class"),
            _ => return Ok(()),
        };
        let mut programs: Vec<String> = Vec::new();
        let mut signatures: Vec<String> = Vec::new();
        for w in self.workers.values() {
            match table_of(&w.info).get(name) {
                Some(sig) if spec.signature.is_empty() || *sig == spec.signature => return Ok(()),
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
                    spec.signature,
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

    /// A worker reports a task's outcome.
    pub fn task_finished(&mut self, worker: WorkerId, result: pb::TaskResult) {
        let id = ObjectId(result.task);
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let on_worker = match task.state {
            TaskState::Running { worker: w } | TaskState::Cancelled { worker: w } => w == worker,
            _ => false,
        };
        if !on_worker || task.attempt != result.attempt {
            return; // a stale report from an earlier attempt
        }
        let cancelled = matches!(task.state, TaskState::Cancelled { .. });
        if let Some(task_spec::Kind::Function(f)) = &task.spec.kind {
            let sample = result.run_micros as f64;
            match self.run_micros.get_mut(f) {
                Some(avg) => *avg = 0.8 * *avg + 0.2 * sample,
                None => {
                    self.run_micros.insert(f.clone(), sample);
                }
            }
        }
        self.release_slots(worker, id);
        if cancelled {
            if let Some(task_result::Outcome::StoredSize(_)) = result.outcome {
                self.outbox.push(Effect::ToWorker(
                    worker,
                    worker_command::Command::Free(id.0),
                ));
            }
            // An actor killed while its constructor ran came up anyway: stop it there.
            let created = !matches!(result.outcome, Some(task_result::Outcome::Error(_)));
            if created && self.tasks.get(&id).is_some_and(Task::is_actor_creation) {
                self.outbox.push(Effect::ToWorker(
                    worker,
                    worker_command::Command::KillActor(id.0),
                ));
            }
            self.remove_task(id);
            self.schedule();
            return;
        }
        let task = self.tasks.get_mut(&id).expect("checked above");
        let actor = task.actor();
        if let Some(actor) = actor {
            if let Some(a) = self.actors.get_mut(&actor) {
                a.inflight.remove(&id);
            }
        }
        match result.outcome {
            Some(task_result::Outcome::Error(err))
                if err.kind == ErrorKind::ObjectLost as i32
                    && task.refetches < MAX_REFETCHES
                    && actor.is_none() =>
            {
                // An argument vanished while the worker fetched it: run again once it is back.
                // (Not actor calls: later calls may have run already, and order is promised.)
                task.refetches += 1;
                self.requeue(id);
            }
            Some(task_result::Outcome::Error(mut err)) => {
                // Workers report only kind and message; the caller's error names the task.
                if err.task.is_empty() {
                    err.task = task.name.clone();
                }
                if task.is_actor_creation() {
                    self.actor_creation_failed(id, err);
                } else {
                    self.count_outcome(id, false);
                    self.remove_task(id);
                    self.set_object(id, ObjectValue::Failed(err));
                }
            }
            outcome => {
                let value = match outcome {
                    Some(task_result::Outcome::StoredSize(size)) => ObjectValue::Stored {
                        size,
                        locations: vec![worker],
                    },
                    Some(task_result::Outcome::InlineValue(b)) => ObjectValue::Inline(b),
                    _ => ObjectValue::Inline(Bytes::new()),
                };
                if task.is_actor_creation() {
                    self.actor_created(id, worker);
                }
                self.count_outcome(id, true);
                self.remove_task(id);
                self.set_object(id, value);
                if matches!(
                    self.workers.get(&worker).map(|w| w.state),
                    Some(WorkerState::Draining { .. })
                ) {
                    // A result made on a draining worker needs a copy elsewhere like the rest.
                    self.copy_sole_objects(worker, Some(id));
                }
            }
        }
        if let Some(actor) = actor {
            self.pump_actor(actor);
        }
        self.schedule();
        self.check_drains();
    }

    fn release_slots(&mut self, worker: WorkerId, id: ObjectId) {
        let (slots, custom, blocked) = match self.tasks.get_mut(&id) {
            Some(t) => (t.slots, t.custom.clone(), std::mem::take(&mut t.blocked)),
            None => return,
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.running.remove(&id) {
                w.busy_slots = w.busy_slots.saturating_sub(slots);
                if blocked {
                    w.lent_slots = w.lent_slots.saturating_sub(slots);
                }
                for (k, v) in custom {
                    *w.custom_free.entry(k).or_default() += v;
                }
            }
        }
    }

    /// Drops a task and the references it held on its arguments.
    fn remove_task(&mut self, id: ObjectId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        for dep in task.deps {
            if let Some(o) = self.objects.get_mut(&dep) {
                o.dependents.retain(|d| *d != id);
            }
            self.decref(dep);
        }
    }

    fn fail_task(&mut self, id: ObjectId, kind: ErrorKind, message: String) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let err = TaskError {
            kind: kind as i32,
            task: task.name.clone(),
            message,
        };
        let (state, creation, actor) = (task.state, task.is_actor_creation(), task.actor());
        if let TaskState::Running { worker } = state {
            self.release_slots(worker, id);
        }
        if creation {
            self.actor_creation_failed(id, err);
            return;
        }
        if let Some(actor) = actor {
            if let Some(a) = self.actors.get_mut(&actor) {
                a.queue.retain(|c| *c != id);
                a.inflight.remove(&id);
            }
        }
        self.queue.retain(|t| *t != id);
        self.count_outcome(id, false);
        self.remove_task(id);
        self.set_object(id, ObjectValue::Failed(err));
    }

    /// A session cancels a task: queued tasks are dropped, running ones are told to stop.
    pub fn cancel(&mut self, session: SessionId, id: ObjectId) {
        if self.tasks.get(&id).is_some_and(|t| t.owner == session) {
            self.cancel_task(id, "cancelled by its caller");
            self.schedule();
        }
    }

    fn cancel_task(&mut self, id: ObjectId, why: &str) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        match task.state {
            TaskState::Running { worker } => {
                task.state = TaskState::Cancelled { worker };
                let err = TaskError {
                    kind: ErrorKind::Cancelled as i32,
                    task: task.name.clone(),
                    message: format!("{} was {why}", task.name),
                };
                if let Some(actor) = task.actor() {
                    if let Some(a) = self.actors.get_mut(&actor) {
                        a.inflight.remove(&id);
                    }
                }
                self.outbox.push(Effect::ToWorker(
                    worker,
                    worker_command::Command::Cancel(id.0),
                ));
                self.count_outcome(id, false);
                self.set_object(id, ObjectValue::Failed(err));
            }
            TaskState::Cancelled { .. } => {}
            TaskState::Waiting { .. } | TaskState::Pending => {
                let name = task.name.clone();
                self.fail_task(id, ErrorKind::Cancelled, format!("{name} was {why}"));
            }
        }
    }

    /// A task waits in `get` inside a worker: lend its slots to other tasks until it resumes.
    pub fn task_blocked(&mut self, id: ObjectId, blocked: bool) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let TaskState::Running { worker } = task.state else {
            return;
        };
        if task.blocked == blocked {
            return;
        }
        task.blocked = blocked;
        let slots = task.slots;
        if let Some(w) = self.workers.get_mut(&worker) {
            if blocked {
                w.lent_slots += slots;
            } else {
                w.lent_slots = w.lent_slots.saturating_sub(slots);
            }
        }
        self.schedule();
    }

    // ------------------------------------------------------------------ placement

    /// Places ready tasks on workers with room, in queue order.
    pub fn schedule(&mut self) {
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
            if let Err((kind, msg)) = self.check_registry(&task.spec) {
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
    }

    /// Whether some live worker could run the task once idle (enough slots and resources).
    fn fits_some_worker(&self, id: ObjectId) -> bool {
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        self.workers.values().any(|w| {
            w.state == WorkerState::Active
                && task.slots <= w.info.slots
                && task
                    .custom
                    .iter()
                    .all(|(k, v)| w.info.custom.get(k).copied().unwrap_or(0) >= *v)
        })
    }

    /// Whether a ready task's arguments are all still there. An argument lost since it became
    /// ready (and being rebuilt) sends the task back to waiting; a failed one fails the task.
    fn args_ready(&mut self, id: ObjectId) -> bool {
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        let mut pending = false;
        let mut failed = None;
        for dep in &task.deps {
            match self.objects.get(dep).map(|o| &o.value) {
                Some(ObjectValue::Pending) => pending = true,
                Some(ObjectValue::Failed(e)) => {
                    failed = Some(format!(
                        "an argument of {} failed: {}",
                        task.name, e.message
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

    fn has_room_anywhere(&self) -> bool {
        self.workers
            .values()
            .any(|w| w.state == WorkerState::Active && w.busy_slots < w.max_capacity(self.prefetch))
    }

    fn pick_worker(&self, id: ObjectId) -> Option<WorkerId> {
        let task = &self.tasks[&id];
        let function = match &task.spec.kind {
            Some(task_spec::Kind::Function(f)) => Some(f.as_str()),
            _ => None,
        };
        let short = function
            .and_then(|f| self.run_micros.get(f))
            .is_some_and(|avg| *avg < SHORT_TASK_MICROS);
        let class = match &task.spec.kind {
            Some(task_spec::Kind::CreateActor(c)) => Some(c.class.as_str()),
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
                    *local_bytes.entry(*l).or_default() += size;
                }
            }
        }
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
            if task.slots > w.info.slots + w.lent_slots
                || w.busy_slots + task.slots > w.capacity(prefetch)
            {
                continue;
            }
            if task
                .custom
                .iter()
                .any(|(k, v)| w.custom_free.get(k).copied().unwrap_or(0) < *v)
            {
                continue;
            }
            let free = i64::from(w.info.slots + w.lent_slots) - i64::from(w.busy_slots);
            // Prefer data locality, then free slots, then fewer actors, then the lower id.
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

    fn dispatch(&mut self, id: ObjectId, worker: WorkerId) {
        let task = self.tasks.get_mut(&id).expect("dispatch of a live task");
        task.state = TaskState::Running { worker };
        let (slots, custom) = (task.slots, task.custom.clone());
        let attempt = task.attempt;
        let w = self
            .workers
            .get_mut(&worker)
            .expect("dispatch to a live worker");
        w.running.insert(id);
        w.busy_slots += slots;
        for (k, v) in custom {
            if let Some(free) = w.custom_free.get_mut(&k) {
                *free = free.saturating_sub(v);
            }
        }
        let task = &self.tasks[&id];
        let restarts = if task.is_actor_creation() {
            self.actors.get(&id).map(|a| a.restarts).unwrap_or(0)
        } else {
            0
        };
        let args = task
            .spec
            .args
            .iter()
            .map(|a| pb::ResolvedArg {
                kind: Some(match &a.kind {
                    Some(arg::Kind::Object(o)) => {
                        let oid = ObjectId(*o);
                        match &self.objects[&oid].value {
                            ObjectValue::Inline(b) => resolved_arg::Kind::Value(b.clone()),
                            ObjectValue::Stored { size, locations } => {
                                resolved_arg::Kind::Stored(pb::StoredRef {
                                    object: *o,
                                    r#where: Some(self.stored(*size, locations)),
                                })
                            }
                            other => unreachable!("a ready task's argument is {other:?}"),
                        }
                    }
                    Some(arg::Kind::Value(v)) => resolved_arg::Kind::Value(v.clone()),
                    None => resolved_arg::Kind::Value(Bytes::new()),
                }),
            })
            .collect();
        let run = pb::Dispatch {
            spec: Some(task.spec.clone()),
            attempt,
            args,
            restarts,
        };
        self.outbox
            .push(Effect::ToWorker(worker, worker_command::Command::Run(run)));
    }

    // ------------------------------------------------------------------ actors

    fn pump_actor(&mut self, actor: ObjectId) {
        loop {
            let Some(a) = self.actors.get(&actor) else {
                return;
            };
            let ActorState::Alive { worker } = a.state else {
                return;
            };
            let Some(&front) = a.queue.front() else {
                return;
            };
            let ready = self
                .tasks
                .get(&front)
                .is_some_and(|t| t.state == TaskState::Pending);
            if !ready {
                if !self.tasks.contains_key(&front) {
                    self.actors
                        .get_mut(&actor)
                        .expect("checked")
                        .queue
                        .pop_front();
                    continue;
                }
                return;
            }
            if !self.args_ready(front) {
                continue;
            }
            let a = self.actors.get_mut(&actor).expect("checked");
            a.queue.pop_front();
            a.inflight.insert(front);
            self.dispatch(front, worker);
        }
    }

    fn actor_created(&mut self, actor: ObjectId, worker: WorkerId) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        a.state = ActorState::Alive { worker };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.actors.insert(actor);
        }
        self.pump_actor(actor);
    }

    fn actor_creation_failed(&mut self, id: ObjectId, err: TaskError) {
        self.count_outcome(id, false);
        self.remove_task(id);
        let msg = format!("its constructor {} failed: {}", err.task, err.message);
        if self
            .objects
            .get(&id)
            .is_some_and(|o| matches!(o.value, ObjectValue::Pending))
        {
            self.set_object(id, ObjectValue::Failed(err));
        }
        self.actor_dead(id, msg);
    }

    fn actor_worker_died(&mut self, actor: ObjectId, why: &str) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        if a.state == ActorState::Dead {
            return;
        }
        let inflight: Vec<ObjectId> = a.inflight.drain().collect();
        let class = a.class.clone();
        for call in inflight {
            self.fail_task(
                call,
                ErrorKind::ActorDied,
                format!("actor {actor} ({class}) died while running this call: {why}"),
            );
        }
        let a = self.actors.get_mut(&actor).expect("checked");
        let can_restart = a.max_restarts < 0 || (a.restarts as i64) < i64::from(a.max_restarts);
        if can_restart {
            a.restarts += 1;
            a.state = ActorState::Restarting;
            let spec = a.create_spec.clone();
            let owner = a.owner;
            self.remove_task(actor);
            self.insert_task(spec, owner, false);
        } else {
            let msg = format!(
                "{why}, and it was restarted {} of max_restarts={} times",
                a.restarts, a.max_restarts
            );
            // A creation that was running on the dead worker goes with the actor.
            self.remove_task(actor);
            self.actor_dead(actor, msg);
        }
    }

    fn actor_dead(&mut self, actor: ObjectId, why: String) {
        let Some(a) = self.actors.get_mut(&actor) else {
            return;
        };
        a.state = ActorState::Dead;
        a.death = why.clone();
        let class = a.class.clone();
        let name = std::mem::take(&mut a.name);
        if self.named_actors.get(&name) == Some(&actor) {
            self.named_actors.remove(&name);
        }
        let a = self.actors.get_mut(&actor).expect("checked above");
        let queued: Vec<ObjectId> = a.queue.drain(..).collect();
        let inflight: Vec<ObjectId> = a.inflight.drain().collect();
        for w in self.workers.values_mut() {
            w.actors.remove(&actor);
        }
        if self
            .objects
            .get(&actor)
            .is_some_and(|o| matches!(o.value, ObjectValue::Pending))
        {
            self.set_object(
                actor,
                ObjectValue::Failed(TaskError {
                    kind: ErrorKind::ActorDied as i32,
                    task: format!("{class}::new"),
                    message: format!("actor {actor} ({class}) is dead: {why}"),
                }),
            );
        }
        for call in queued.into_iter().chain(inflight) {
            self.fail_task(
                call,
                ErrorKind::ActorDied,
                format!("actor {actor} ({class}) is dead: {why}"),
            );
        }
    }

    fn kill_actor(&mut self, actor: ObjectId, why: &str) {
        let Some(a) = self.actors.get(&actor) else {
            return;
        };
        if let ActorState::Alive { worker } = a.state {
            self.outbox.push(Effect::ToWorker(
                worker,
                worker_command::Command::KillActor(actor.0),
            ));
        }
        if self.tasks.contains_key(&actor) {
            self.cancel_task(actor, why);
        }
        self.actor_dead(actor, why.to_string());
    }

    /// Looks up a named actor for a session.
    pub fn lookup_actor(&mut self, session: SessionId, request: u64, name: &str) {
        let found = self
            .named_actors
            .get(name)
            .and_then(|id| self.actors.get(id).map(|a| (id, a)))
            .filter(|(_, a)| a.state != ActorState::Dead);
        let reply = match found {
            Some((id, a)) => pb::ActorFound {
                request,
                actor: id.0,
                class: a.class.clone(),
                error: String::new(),
            },
            None => pb::ActorFound {
                request,
                actor: 0,
                class: String::new(),
                error: format!("no live actor is named {name:?}"),
            },
        };
        self.outbox.push(Effect::ActorFound(session, reply));
    }

    // ------------------------------------------------------------------ drain

    /// Starts draining a worker: no new work goes there, its objects are copied elsewhere, its
    /// actors restart elsewhere; `Drained` follows when it is empty or the deadline passed.
    pub fn drain(&mut self, worker: WorkerId, now: Instant, timeout: Duration) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match w.state {
            WorkerState::Draining { .. } => return,
            WorkerState::Drained => {
                let message = format!("worker {} is already drained", w.info.name);
                self.outbox.push(Effect::Drained {
                    worker,
                    outcome: pb::DrainOutcome::Drained,
                    message,
                });
                return;
            }
            WorkerState::Active => {}
        }
        w.state = WorkerState::Draining {
            deadline: now + timeout,
        };
        // Prefetched tasks that have not started cannot be told apart here; they finish there.
        let mut actors: Vec<ObjectId> = w.actors.drain().collect();
        actors.sort();
        for actor in actors {
            self.outbox.push(Effect::ToWorker(
                worker,
                worker_command::Command::KillActor(actor.0),
            ));
            self.actor_worker_died(actor, "its worker was drained");
        }
        self.copy_sole_objects(worker, None);
        self.check_drains();
        self.schedule();
    }

    /// Copies the objects only `worker` holds (or just `only`, if it is one) to another worker.
    fn copy_sole_objects(&mut self, worker: WorkerId, only: Option<ObjectId>) {
        let target = self
            .workers
            .iter()
            .filter(|(id, w)| **id != worker && w.state == WorkerState::Active)
            .min_by_key(|(id, w)| (w.store.memory_bytes, **id))
            .map(|(id, _)| *id);
        let Some(target) = target else { return };
        let mut copies = Vec::new();
        for (id, obj) in &self.objects {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            if let ObjectValue::Stored { size, locations } = &obj.value {
                if locations.as_slice() == [worker] {
                    copies.push(pb::CopyObject {
                        object: id.0,
                        from: Some(self.stored(*size, locations)),
                    });
                }
            }
        }
        copies.sort_by_key(|c| c.object);
        for c in copies {
            self.outbox
                .push(Effect::ToWorker(target, worker_command::Command::Copy(c)));
        }
    }

    fn sole_objects(&self, worker: WorkerId) -> usize {
        self.objects
            .values()
            .filter(|o| matches!(&o.value, ObjectValue::Stored { locations, .. } if locations.as_slice() == [worker]))
            .count()
    }

    fn check_drains(&mut self) {
        let draining: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Draining { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in draining {
            let w = &self.workers[&id];
            if w.running.is_empty() && self.sole_objects(id) == 0 {
                self.finish_drain(
                    id,
                    pb::DrainOutcome::Drained,
                    "drained: no running tasks, every object it held has a copy elsewhere".into(),
                );
            }
        }
    }

    fn finish_drain(&mut self, worker: WorkerId, outcome: pb::DrainOutcome, message: String) {
        // The worker stays registered (so it takes no work) until its process goes away.
        if let Some(w) = self.workers.get_mut(&worker) {
            w.state = WorkerState::Drained;
        }
        self.outbox.push(Effect::Drained {
            worker,
            outcome,
            message,
        });
    }

    /// Enforces drain deadlines.
    pub fn tick(&mut self, now: Instant) {
        // (Also those with nothing running: objects that found no copy must not hold them up.)
        let mut overdue: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(
                |(_, w)| matches!(w.state, WorkerState::Draining { deadline } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        overdue.sort();
        for id in overdue {
            let name = self.workers[&id].info.name.clone();
            let running: Vec<ObjectId> = self.workers[&id].running.iter().copied().collect();
            let n = running.len();
            for t in &running {
                self.release_slots(id, *t);
            }
            let mut running = running;
            running.sort();
            for t in running {
                self.outbox
                    .push(Effect::ToWorker(id, worker_command::Command::Cancel(t.0)));
                self.task_lost(t, &name);
            }
            let lost = self.sole_objects(id);
            self.finish_drain(
                id,
                pb::DrainOutcome::TimedOut,
                format!("drain deadline passed: {n} running tasks were moved elsewhere, {lost} objects had no copy"),
            );
            self.schedule();
        }
    }

    // ------------------------------------------------------------------ views

    /// Counters and gauges.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            tasks_finished: self.finished,
            tasks_failed: self.failed,
            tasks_retried: self.retried,
            objects: self.objects.len() as u64,
            // Drivers only: every worker also holds a session for the tasks its tasks submit.
            sessions: self
                .sessions
                .values()
                .filter(|s| s.worker.is_none())
                .count() as u64,
            ..Snapshot::default()
        };
        for t in self.tasks.values() {
            match t.state {
                TaskState::Waiting { .. } => s.tasks_waiting += 1,
                TaskState::Pending => s.tasks_pending += 1,
                TaskState::Running { .. } | TaskState::Cancelled { .. } => s.tasks_running += 1,
            }
        }
        let mut max_slots = 1u64;
        for w in self.workers.values() {
            let busy = u64::from(w.busy_slots.min(w.info.slots));
            s.slots_busy += busy;
            s.slots_free += u64::from(w.info.slots) - busy;
            max_slots = max_slots.max(u64::from(w.info.slots));
            match w.state {
                WorkerState::Draining { .. } | WorkerState::Drained => s.workers_draining += 1,
                WorkerState::Active if w.running.is_empty() && w.actors.is_empty() => {
                    s.workers_idle += 1
                }
                WorkerState::Active => s.workers_busy += 1,
            }
            s.store_memory_bytes += w.store.memory_bytes;
            s.store_spilled_bytes += w.store.spilled_bytes;
        }
        for a in self.actors.values() {
            match a.state {
                ActorState::Alive { .. } => s.actors_alive += 1,
                ActorState::Creating | ActorState::Restarting => s.actors_restarting += 1,
                ActorState::Dead => s.actors_dead += 1,
            }
        }
        let demand: u64 = self
            .tasks
            .values()
            .filter(|t| !matches!(t.state, TaskState::Waiting { .. }))
            .map(|t| u64::from(t.slots))
            .sum();
        let actor_workers = self
            .actors
            .values()
            .filter(|a| a.state != ActorState::Dead)
            .count() as u64;
        s.desired_workers = demand.div_ceil(max_slots).max(u64::from(actor_workers > 0));
        s
    }

    /// Workers for `flotilla status`.
    pub fn workers(&self) -> Vec<WorkerView> {
        let mut v: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(id, w)| WorkerView {
                id: *id,
                name: w.info.name.clone(),
                address: w.info.address.clone(),
                http_address: w.info.http_address.clone(),
                node: w.info.node.clone(),
                state: match w.state {
                    WorkerState::Draining { .. } => pb::WorkerState::Draining,
                    WorkerState::Drained => pb::WorkerState::Drained,
                    WorkerState::Active if w.running.is_empty() && w.actors.is_empty() => {
                        pb::WorkerState::Idle
                    }
                    WorkerState::Active => pb::WorkerState::Busy,
                },
                slots: w.info.slots,
                busy_slots: w.busy_slots.min(w.info.slots),
                store: w.store,
                program: w.info.program.clone(),
                group: w.info.group.clone(),
            })
            .collect();
        v.sort_by_key(|w| w.id);
        v
    }

    /// Whether the session exists.
    pub fn has_session(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    /// The worker a session lives in, if any.
    pub fn session_worker(&self, session: SessionId) -> Option<&str> {
        self.sessions
            .get(&session)
            .and_then(|s| s.worker.as_deref())
    }
}

/// Picks a registry table (functions or actor classes) out of a worker's description.
type RegistryTable = fn(&WorkerInfo) -> &HashMap<String, String>;

/// The distinct object arguments of a spec, in first-use order.
fn distinct_deps(spec: &TaskSpec) -> Vec<ObjectId> {
    let mut deps = Vec::new();
    for a in &spec.args {
        if let Some(arg::Kind::Object(o)) = a.kind {
            let id = ObjectId(o);
            if !deps.contains(&id) {
                deps.push(id);
            }
        }
    }
    deps
}

/// A readable name for a task: the function, `Class` for creation, the method for calls.
pub fn spec_name(spec: &TaskSpec) -> String {
    match &spec.kind {
        Some(task_spec::Kind::Function(f)) => f.clone(),
        Some(task_spec::Kind::CreateActor(c)) => format!("{}::new", c.class),
        Some(task_spec::Kind::ActorCall(c)) => c.method.clone(),
        None => "<empty task>".into(),
    }
}

fn error_state(id: ObjectId, task: &str, kind: ErrorKind, message: String) -> ObjectState {
    ObjectState {
        object: id.0,
        state: Some(object_state::State::Error(TaskError {
            kind: kind as i32,
            task: task.into(),
            message,
        })),
    }
}
