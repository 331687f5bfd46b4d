//! The head's brain: tasks, objects, actors, workers and sessions as a state machine with no I/O.
//!
//! Every input is a method call (`submit`, `task_finished`, `worker_lost`, …); every output is an
//! [`Effect`] pushed to the outbox, which the gRPC layer drains and delivers. Time only enters
//! through the `now` arguments, so tests drive the scheduler deterministically.
//!
//! # Layout
//!
//! This file is the facade: the [`Scheduler`] with its tables, the [`Effect`]s it emits, and every
//! public entry point. Each entry point converts its protobuf input into the scheduler's own
//! types (in `convert`, the only module that reads or builds protobuf messages) and hands it to
//! the submodule of its concern:
//!
//! - `task_def`: what a task is (what it runs, its arguments, its resolved options);
//! - `tasks`: the live task table; submission, readiness, requeueing, blocking;
//! - `outcomes`: results, failures, retries after a worker died, cancellation;
//! - `direct`: actor calls and leased tasks a driver ran straight on a worker, recorded once
//!   they ended;
//! - `leases`: slots of workers that drivers hold for pushing tasks there themselves;
//! - `objects`: the object directory (values, locations, refcounts, lineage, subscribers);
//! - `actors`: the actor table, ordered call queues, restarts, named actors;
//! - `workers`: registration, capacity, and what a lost worker takes with it;
//! - `sessions`: driver sessions and what closing one releases;
//! - `resume`: sessions and stored objects a restarted head learns again;
//! - `placement`: the ready queue, registry checks, picking a worker, dispatch;
//! - `drain`: draining a worker, copying its objects away, deadlines;
//! - `failure`: why a task or an object failed;
//! - `view`: counters, [`Snapshot`] and [`WorkerView`] for status and metrics.
//!
//! The submodules add `impl Scheduler` blocks rather than owning sub-structs (as hyperqueue's
//! tako spreads its reactor over functions on one core): nearly every transition crosses tables
//! (a finished task sets an object, which wakes dependents, which may fail and free arguments,
//! which may kill an actor), and one `&mut self` keeps those chains plain method calls instead of
//! borrow-splitting juggling. The leaf concerns that touch nothing else, the run counters and
//! the run-time estimates, are small structs the facade owns.

mod actors;
mod convert;
mod direct;
mod drain;
mod failure;
mod jobs;
mod leases;
mod objects;
mod outcomes;
mod placement;
mod resume;
mod sessions;
mod task_def;
mod tasks;
mod view;
mod workers;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use flotilla_proto::v1::{self as pb, worker_command, ObjectState, TaskSpec};

pub use crate::options::DEFAULT_MAX_RETRIES;
use crate::{
    ids::{ObjectId, SessionId, WorkerId},
    ErrorKind,
};
pub use convert::spec_name;
pub use drain::UndrainError;
pub use jobs::{JobCancelled, JobView, MAX_JOBS};
pub use resume::RESUME_GRACE;
pub use view::{Snapshot, WorkerView, MAX_DEMAND_SHAPES, MAX_RUN_NAMES, OTHER_RUNS, UNREGISTERED};
pub use workers::{RegisterError, WorkerInfo};

use actors::Actor;
use drain::DrainOutcome;
use failure::Failure;
use jobs::Jobs;
use objects::Object;
use placement::RunTimes;
use resume::HeldObject;
use sessions::Session;
use task_def::TaskDef;
use tasks::Task;
use view::Counters;
use workers::Worker;

/// Something the I/O layer must deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A command for a worker.
    ToWorker(WorkerId, worker_command::Command),
    /// The state of an object, for a session that owns or awaits it.
    ToSession(SessionId, ObjectState),
    /// The answer to an actor lookup.
    ActorFound(SessionId, pb::ActorFound),
    /// The answer to a lease request.
    Lease(SessionId, pb::LeaseGranted),
    /// The head takes a session's lease back.
    LeaseRevoked(SessionId, u64),
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

/// An effect in the scheduler's own terms; [`Scheduler::emit`] renders it as an [`Effect`] at
/// once, from the tables as they stand.
#[derive(Debug)]
enum Output {
    /// Run a task (its spec, attempt and arguments as they are now) on a worker.
    Run {
        worker: WorkerId,
        task: ObjectId,
        /// For an actor's creation: how many times it restarted before.
        restarts: u32,
    },
    /// Stop a running task; its result will be dropped.
    Cancel { worker: WorkerId, task: ObjectId },
    /// Drop a worker's copy of an object.
    Free { worker: WorkerId, object: ObjectId },
    /// Stop an actor.
    KillActor { worker: WorkerId, actor: ObjectId },
    /// Fetch a copy of a stored object from where it is now.
    Copy { to: WorkerId, object: ObjectId },
    /// Tell a session an object's value, which is no longer pending.
    State {
        session: SessionId,
        object: ObjectId,
    },
    /// Tell a session that an object it asked about (or tried to create) failed, without the
    /// object being in the directory.
    Refused {
        session: SessionId,
        object: ObjectId,
        failure: Failure,
    },
    /// Answer an actor lookup: the actor and its class, or why none was found.
    ActorFound {
        session: SessionId,
        request: u64,
        found: Result<actors::FoundActor, String>,
    },
    /// A drain ended.
    Drained {
        worker: WorkerId,
        outcome: DrainOutcome,
        message: String,
    },
    /// Answer a lease request.
    Lease {
        session: SessionId,
        grant: pb::LeaseGranted,
    },
    /// Tell a session to give a lease back.
    LeaseRevoked { session: SessionId, lease: u64 },
    /// Stop the tasks running on a lease.
    CancelLease { worker: WorkerId, lease: u64 },
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    workers: HashMap<WorkerId, Worker>,
    worker_names: HashMap<String, WorkerId>,
    next_worker: u32,
    sessions: HashMap<SessionId, Session>,
    next_session: u32,
    /// Live tasks by id: waiting, queued, running, or cancelled while running.
    tasks: HashMap<ObjectId, Task>,
    /// Ready tasks that are not actor calls, in placement order.
    queue: VecDeque<ObjectId>,
    objects: HashMap<ObjectId, Object>,
    actors: HashMap<ObjectId, Actor>,
    named_actors: HashMap<String, ObjectId>,
    /// Tasks a worker may hold beyond its slots when their length is unknown or long.
    prefetch: u32,
    run_times: RunTimes,
    counters: Counters,
    /// Bytes of inline values the head holds, by the session that owns them.
    inline_bytes: HashMap<SessionId, u64>,
    /// Objects waiting for their session to resume, or for a worker to report them.
    resumption: resume::Resumption,
    /// Task counts by job id.
    jobs: Jobs,
    /// Slots of workers that sessions hold.
    leases: leases::Leases,
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
            queue: VecDeque::new(),
            objects: HashMap::new(),
            actors: HashMap::new(),
            named_actors: HashMap::new(),
            prefetch,
            run_times: RunTimes::default(),
            counters: Counters::default(),
            inline_bytes: HashMap::new(),
            resumption: resume::Resumption::default(),
            jobs: Jobs::default(),
            leases: leases::Leases::default(),
            outbox: Vec::new(),
        }
    }

    /// Numbers new sessions from `first` on. A head picks a random start, so sessions of a head
    /// that restarted, which come back with their numbers, rarely meet a new session's number.
    pub fn with_first_session(mut self, first: u32) -> Self {
        self.next_session = first.max(1);
        self
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
        self.register_worker(info)
    }

    /// The id of a worker by name.
    pub fn worker_by_name(&mut self, name: &str) -> Option<WorkerId> {
        self.worker_names.get(name).copied()
    }

    /// Records a worker's store statistics.
    pub fn store_stats(&mut self, worker: WorkerId, stats: pb::StoreStats) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.store = stats.into();
        }
    }

    /// A worker is gone (its connection dropped or it was killed): retry its tasks elsewhere,
    /// rebuild the objects only it held, restart its actors.
    pub fn worker_lost(&mut self, worker: WorkerId) {
        self.remove_worker(worker);
    }

    /// A worker said it exits to stop a cancelled task that did not stop on its thread: when it
    /// is lost, its other running tasks are retried without using up their retries.
    pub fn worker_exiting(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.exiting = true;
        }
    }

    // ------------------------------------------------------------------ sessions

    /// Opens a driver session and returns its id (the high bits of the ids it mints).
    pub fn open_session(&mut self, worker: Option<String>) -> SessionId {
        self.open_job_session(worker, None)
    }

    /// Opens a session that runs for `job` (a driver's `FLOTILLA_JOB`; empty means none); its
    /// tasks count for the job and are cancelled with it.
    pub fn open_job_session(&mut self, worker: Option<String>, job: Option<String>) -> SessionId {
        while self.sessions.contains_key(&SessionId(self.next_session)) {
            self.next_session += 1;
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.insert_session(id, worker, job);
        id
    }

    /// Records session `id` (a new one or a resumed one) and, if it runs for a job, opens the
    /// job's count.
    fn insert_session(&mut self, id: SessionId, worker: Option<String>, job: Option<String>) {
        let job = job.filter(|j| !j.is_empty());
        self.sessions.insert(
            id,
            Session {
                worker,
                job: job.clone(),
                cancelled: false,
            },
        );
        if let Some(job) = job {
            self.job_opened(id, &job);
        }
    }

    /// Opens session `id` again for a driver that lost its head (this head, restarted, or this
    /// head after the driver's connection broke). `holds` are the stored objects it still
    /// references: they stay, waiting for a worker to report them; the session's other objects
    /// that workers reported are released. Refused while session `id` is open.
    pub fn resume_session(
        &mut self,
        id: SessionId,
        worker: Option<String>,
        job: Option<String>,
        holds: Vec<ObjectId>,
        now: Instant,
    ) -> Result<(), String> {
        self.resume(id, worker, job, holds, now)
    }

    /// A worker reports the objects its store holds, after it registered with a head that
    /// restarted since it last registered.
    pub fn adopt_objects(&mut self, worker: WorkerId, held: pb::HeldObjects, now: Instant) {
        let held = held.objects.into_iter().map(HeldObject::from).collect();
        self.adopt(worker, held, now);
    }

    /// Cancels a job's work: its drivers' tasks and actors; those drivers may submit nothing
    /// more. A job id no session uses cancels nothing.
    pub fn cancel_job(&mut self, job: &str) -> JobCancelled {
        self.cancel_job_work(job)
    }

    /// Task counts of the jobs the head knows (at most [`MAX_JOBS`]), by id.
    pub fn jobs(&self) -> Vec<JobView> {
        self.job_views()
    }

    /// A session ended: cancel its tasks, free its objects, kill its actors that are not detached.
    pub fn close_session(&mut self, session: SessionId) {
        self.end_session(session);
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

    // ------------------------------------------------------------------ objects

    /// A session put a value: inline bytes, or stored on a worker (with the shared-memory
    /// segment each location keeps it in, if any).
    pub fn put(&mut self, session: SessionId, id: ObjectId, value: pb::put_object::Value) {
        self.put_object(session, id, value.into());
    }

    /// The session dropped its last reference to an object it owns.
    pub fn release(&mut self, session: SessionId, id: ObjectId) {
        self.release_by_owner(session, id);
    }

    /// An object's value references `inner` objects (it holds `ObjectRef`s): they are held until
    /// it is freed. A session sends this before it releases its own handles to them.
    pub fn contained(&mut self, outer: ObjectId, inner: impl IntoIterator<Item = ObjectId>) {
        self.add_contained(outer, inner.into_iter().collect());
    }

    /// Tell `session` when the object is ready (at once if it is).
    pub fn subscribe(&mut self, session: SessionId, id: ObjectId) {
        self.add_subscriber(session, id);
    }

    /// A worker now holds a copy of an object (after a fetch or a drain copy).
    pub fn stored_copy(&mut self, worker: WorkerId, id: ObjectId) {
        self.add_copy(worker, id);
    }

    // ------------------------------------------------------------------ tasks

    /// A session submitted a task, an actor creation or an actor call.
    pub fn submit(&mut self, session: SessionId, spec: TaskSpec) {
        self.submit_for(session, spec, None);
    }

    /// A session submitted a task on behalf of `parent`: a running task that submits tasks
    /// through its worker's session, whose job the new task counts for.
    pub fn submit_for(&mut self, session: SessionId, spec: TaskSpec, parent: Option<ObjectId>) {
        let id = ObjectId(spec.task);
        match TaskDef::try_from(spec) {
            Ok(mut def) => {
                def.parent = parent;
                self.submit_task(session, def)
            }
            Err(failure) => self.emit(Output::Refused {
                session,
                object: id,
                failure,
            }),
        }
    }

    /// A session sends a task again whose leased run was lost with its worker (at `lost_on`):
    /// it comes with one retry fewer, and counts as a retry.
    pub fn submit_lost(
        &mut self,
        session: SessionId,
        spec: TaskSpec,
        parent: Option<ObjectId>,
        lost_on: &str,
    ) {
        let _ = lost_on;
        self.counters.retried += 1;
        self.submit_for(session, spec, parent);
    }

    /// A session asks for a lease on a slot for tasks of one shape; answered with
    /// [`Effect::Lease`].
    pub fn request_lease(&mut self, session: SessionId, request: pb::LeaseRequest) {
        self.grant_lease(session, request);
    }

    /// A session gives a lease back.
    pub fn return_lease(&mut self, session: SessionId, lease: u64) {
        self.lease_returned(session, lease);
    }

    /// Slots held by leases, and leases out.
    pub fn leased(&self) -> (u64, usize) {
        (
            self.leases.slots_by_worker().values().sum(),
            self.leases.by_id.len(),
        )
    }

    /// A worker reports a task's outcome.
    pub fn task_finished(&mut self, worker: WorkerId, mut result: pb::TaskResult) {
        // Held before the task's own holds on its arguments go, which may be all that keeps a
        // reference it returns alive.
        let contained = std::mem::take(&mut result.contained);
        if !contained.is_empty() {
            self.contained(ObjectId(result.task), contained.into_iter().map(ObjectId));
        }
        self.finish_task(worker, result.into());
    }

    /// A session cancels a task: queued tasks are dropped, running ones are told to stop.
    pub fn cancel(&mut self, session: SessionId, id: ObjectId) {
        if self.tasks.get(&id).is_some_and(|t| t.owner == session) {
            self.cancel_task(id, "cancelled by its caller");
            self.place_tasks();
        }
    }

    /// A task waits in `get` inside a worker: lend its slots to other tasks until it resumes.
    pub fn task_blocked(&mut self, id: ObjectId, blocked: bool) {
        self.set_blocked(id, blocked);
    }

    /// A task waits in `get` inside `worker` (or resumes): lend its slots to other tasks until it
    /// resumes; a task this head did not dispatch ran on a lease there, whose slots are lent.
    pub fn task_blocked_on(&mut self, worker: WorkerId, id: ObjectId, blocked: bool) {
        if self.tasks.contains_key(&id) {
            self.set_blocked(id, blocked);
        } else {
            self.leased_task_blocked(worker, id, blocked);
        }
    }

    /// Places ready tasks on workers with room, in queue order.
    pub fn schedule(&mut self) {
        self.place_tasks();
    }

    // ------------------------------------------------------------------ actors

    /// Looks up a named actor for a session.
    pub fn lookup_actor(&mut self, session: SessionId, request: u64, name: &str) {
        let found = self.live_actor_named(name);
        self.emit(Output::ActorFound {
            session,
            request,
            found,
        });
    }

    /// Answers a session's lookup of an actor by id (a name is looked up when one is given):
    /// its class, and where it runs when it is alive, for calls made straight to its worker.
    pub fn locate_actor(&mut self, session: SessionId, lookup: &pb::LookupActor) {
        let found = if lookup.name.is_empty() {
            self.live_actor(ObjectId(lookup.actor))
        } else {
            self.live_actor_named(&lookup.name)
        };
        self.emit(Output::ActorFound {
            session,
            request: lookup.request,
            found,
        });
    }

    /// A session made an actor call straight to the actor's worker, which ran it: records the
    /// call and its outcome as if this head had dispatched it (run and job counts, the result
    /// object, owned by the session). The session has the result already and is not told it.
    pub fn direct_call_done(&mut self, session: SessionId, done: pb::DirectCallDone) {
        let id = done.spec.as_ref().map_or(ObjectId(0), |s| ObjectId(s.task));
        let outcome = match (done.spec, done.result) {
            (Some(spec), Some(result)) => TaskDef::try_from(spec).and_then(|def| {
                self.record_direct_call(session, def, WorkerId(done.worker), done.lease, result)
            }),
            _ => Err(Failure::without_task(
                ErrorKind::Invalid,
                "a direct call's report needs its spec and its result".into(),
            )),
        };
        if let Err(failure) = outcome {
            self.emit(Output::Refused {
                session,
                object: id,
                failure,
            });
        }
    }

    // ------------------------------------------------------------------ drain

    /// Starts draining a worker: no new work goes there, its objects are copied elsewhere, its
    /// actors restart elsewhere; `Drained` follows when it is empty or the deadline passed.
    pub fn drain(&mut self, worker: WorkerId, now: Instant, timeout: Duration) {
        self.start_drain(worker, now + timeout);
    }

    /// Takes a draining or drained worker (by name) back: no drain is pending on it any more and
    /// queued tasks may go there again. A worker that was not draining is left as it is; an
    /// unknown name is an error.
    pub fn undrain(&mut self, worker: &str) -> Result<pb::UndrainReply, UndrainError> {
        self.take_back(worker)
    }

    /// Enforces drain deadlines.
    pub fn tick(&mut self, now: Instant) {
        self.end_overdue_drains(now);
        self.end_overdue_resumptions(now);
    }

    // ------------------------------------------------------------------ views

    /// Counters and gauges.
    pub fn snapshot(&self) -> Snapshot {
        view::snapshot(self)
    }

    /// Workers for `flotilla status`.
    pub fn workers(&self) -> Vec<WorkerView> {
        view::worker_views(self)
    }

    /// Finished and failed runs by task name.
    pub fn runs_by_name(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.counters.runs_by_name()
    }
}
