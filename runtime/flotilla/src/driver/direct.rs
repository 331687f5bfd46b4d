//! Direct actor calls: once a driver knows where an actor lives (its worker's address and the
//! actor's incarnation, from the head), its calls go straight to that worker over one stream per
//! worker and the outcomes come straight back: two hops for an awaited call instead of four. The
//! head hears of each call once it ended (`DriverOp.direct_done`, batched with the session's other
//! ops), and records it as if it had dispatched it.
//!
//! What keeps a call's meaning the same as through the head:
//! - **Order per caller.** A call goes directly only while none of this session's calls to the
//!   actor is on its way through the head, and a call that must go through the head (its
//!   arguments are references, the actor's place is not known, or a direct call came back not
//!   run) waits until the session's direct calls to that actor ended. Those held calls, and any
//!   task taking the result of a call the head does not know yet, are sent in the order they
//!   were made, right after the reports of the calls they waited for.
//! - **At most once.** A call the worker did not run (the actor is not there, or not that life
//!   of it) comes back as not hosted and goes through the head, which runs it on the actor where
//!   it is now. A call whose worker connection breaks while it runs fails with `ActorDied`, as a
//!   call does whose worker dies under the head; it is not run again.
//! - **The head knows every object.** A direct call's result is reported before any op of the
//!   session that could name it (a release, a task taking it).
//!
//! Plain tasks go the same way on a **worker lease** (Ray's model): once tasks of one shape come
//! one at a time, the driver asks the head for a lease on a slot of a worker (`DriverOp.lease`),
//! pushes such tasks with inline arguments to it over the same stream, one at a time, and
//! reports each after it ended (`DirectCallDone.lease`). The lease goes back after a short idle
//! time, or when the head revokes it once the task on it ended. A task whose worker connection
//! breaks goes to the head with one retry fewer (`DriverOp.lost_on`), as the head retries its
//! own; with none left it fails with `WorkerDied`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla_core::ObjectId;
use flotilla_proto::{
    auth::AddAuth,
    v1::{
        self as pb, direct_reply, driver_op, task_result, task_spec, worker_client::WorkerClient,
    },
};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{object_ref::RefInner, reconnect::Unfinished, ObjectCell, Session, State};
use crate::{
    error::ErrorKind,
    net::{self, Batches, MAX_MESSAGE_BYTES},
};

/// How soon a driver asks the head again where an actor is, after it last asked.
const RELOCATE_AFTER: Duration = Duration::from_millis(100);

/// A stream of direct calls to one worker.
#[derive(Clone)]
struct Conn {
    calls: mpsc::UnboundedSender<pb::DirectCall>,
}

/// Where an actor lives, as the head last said.
#[derive(Clone)]
struct Route {
    location: pb::ActorLocation,
    conn: Conn,
}

/// What this session knows of one actor it calls.
#[derive(Default)]
struct Lane {
    route: Option<Route>,
    /// A question to the head about where it is, not answered yet.
    locating: bool,
    asked: Option<Instant>,
    /// Direct calls to it not yet answered.
    inflight: usize,
}

/// A direct call (or leased task) not yet answered.
struct Inflight {
    spec: pb::TaskSpec,
    /// The actor called; `None` for a plain task on a lease.
    actor: Option<ObjectId>,
    /// The lease a plain task runs on: its shape and id.
    lease: Option<(Shape, u64)>,
    location: pb::ActorLocation,
    /// Every reference to its result was dropped: release it at the head after its report.
    released: bool,
    /// Cancelled by its caller: its result is reported as cancelled.
    cancelled: bool,
}

/// A submission for the head that waits for direct calls to end.
struct Held {
    spec: pb::TaskSpec,
    actor: Option<ObjectId>,
    deps: Vec<ObjectId>,
    /// Its argument references, released once it is sent.
    keep: Vec<Arc<RefInner>>,
    released: bool,
}

/// What tasks a lease takes: the function and the resources one task asks for. A lease is for one
/// function, so its worker is sure to have it.
type Shape = (String, u32, Vec<(String, u64)>);

/// How many tasks a driver keeps in flight on one lease: one, as a leased slot runs one task at
/// a time. Tasks past it go through the head, which spreads them over every free slot and whose
/// queue (which autoscaling reads) sees the backlog. Measured with `flotilla bench`: sixteen in
/// flight per lease kept single_client_tasks_async at 104,000 tasks/s against 130,000 through
/// the head alone, as a burst moves faster through the head's batched dispatch than as one
/// direct reply and one report per task.
const LEASE_DEPTH: usize = 1;
/// A driver asks for a lease once this many tasks of a shape in a row were submitted with
/// nothing else of the session in flight: tasks awaited one at a time, which a lease takes from
/// four hops to two. A burst (the second task submitted before the first ended) goes through the
/// head, and asks for none.
const LEASE_AFTER_SOLO: u32 = 2;
/// A lease with nothing in flight for this long goes back to the head.
const LEASE_IDLE: Duration = Duration::from_millis(10);
/// After the head refused or revoked a lease (no free slot, tasks waiting there), how long
/// before asking again for that shape.
const LEASE_RETRY_AFTER: Duration = Duration::from_millis(50);

/// A slot leased from the head.
struct Leased {
    id: u64,
    location: pb::ActorLocation,
    conn: Conn,
}

/// This session's lease for one shape, or its wish for one.
#[derive(Default)]
struct LeaseSlot {
    held: Option<Leased>,
    /// A request is out.
    requesting: bool,
    /// When the head last refused one.
    refused: Option<Instant>,
    /// The head revoked it: push nothing more, return it once its tasks ended.
    revoked: bool,
    inflight: usize,
    /// When its last task in flight ended.
    idle_since: Option<Instant>,
    /// Tasks of the shape submitted in a row with nothing else in flight.
    solo: u32,
    /// A worker refused a task of it on a lease (its function submits tasks of its own, or the
    /// lease's job was cancelled): the shape asks for no lease again.
    never: bool,
}

/// The session's direct calls: actors' places, streams to workers, calls in flight, held
/// submissions, leases.
#[derive(Default)]
pub(super) struct Direct {
    lanes: HashMap<ObjectId, Lane>,
    leases: HashMap<Shape, LeaseSlot>,
    /// Lease requests not yet answered.
    lease_requests: HashMap<u64, tokio::sync::oneshot::Sender<pb::LeaseGranted>>,
    conns: HashMap<String, Conn>,
    inflight: HashMap<ObjectId, Inflight>,
    /// In the order they were made (ids grow with each submission).
    held: BTreeMap<ObjectId, Held>,
    /// Calls sent through the head and not known finished, by actor.
    head_calls: HashMap<ObjectId, ObjectId>,
    /// Calls sent directly so far.
    sent: u64,
}

fn spec_deps(spec: &pb::TaskSpec) -> Vec<ObjectId> {
    spec.args
        .iter()
        .filter_map(|a| match a.kind {
            Some(pb::arg::Kind::Object(o)) => Some(ObjectId(o)),
            _ => None,
        })
        .chain(spec.nested.iter().map(|n| ObjectId(*n)))
        .collect()
}

/// Whether every argument is an inline value (no references, none nested).
fn all_inline(spec: &pb::TaskSpec) -> bool {
    spec.nested.is_empty()
        && spec
            .args
            .iter()
            .all(|a| matches!(a.kind, Some(pb::arg::Kind::Value(_))))
}

/// The shape of a plain task whose arguments are inline values: what a lease would take.
fn lease_shape(spec: &pb::TaskSpec) -> Option<Shape> {
    let Some(task_spec::Kind::Function(f)) = &spec.kind else {
        return None;
    };
    if !all_inline(spec) {
        return None;
    }
    let resources = spec.options.as_ref().and_then(|o| o.resources.as_ref());
    let slots = flotilla_core::options::resolve_slots(resources.map_or(0, |r| r.slots));
    let mut custom: Vec<(String, u64)> = resources
        .map(|r| r.custom.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    custom.sort();
    Some((f.clone(), slots, custom))
}

fn actor_of(spec: &pb::TaskSpec) -> Option<ObjectId> {
    match &spec.kind {
        Some(task_spec::Kind::ActorCall(c)) => Some(ObjectId(c.actor)),
        _ => None,
    }
}

impl Direct {
    /// Whether a submission must wait: it calls an actor this session's direct calls (or held
    /// calls) are still on their way to, or takes an object the head does not know yet.
    fn must_wait(&self, actor: Option<ObjectId>, deps: &[ObjectId]) -> bool {
        if self.inflight.is_empty() && self.held.is_empty() {
            return false;
        }
        let busy_actor = actor.is_some_and(|a| {
            self.lanes.get(&a).is_some_and(|l| l.inflight > 0)
                || self.held.values().any(|h| h.actor == Some(a))
        });
        busy_actor
            || deps
                .iter()
                .any(|d| self.inflight.contains_key(d) || self.held.contains_key(d))
    }

    /// The route for a call, when it may go directly now.
    fn direct_route(&self, actor: ObjectId, spec: &pb::TaskSpec) -> Option<Route> {
        let lane = self.lanes.get(&actor)?;
        let route = lane.route.clone()?;
        let inline = all_inline(spec);
        let through_head = self.head_calls.values().any(|a| *a == actor)
            || self.held.values().any(|h| h.actor == Some(actor));
        (inline && !through_head).then_some(route)
    }

    /// Held submissions that may go now, in order; a held one keeps later ones of its actor, and
    /// those taking its result, waiting.
    fn release_held(&mut self) -> Vec<Held> {
        let mut ready = Vec::new();
        let mut still: HashSet<ObjectId> = HashSet::new();
        let mut still_actors: HashSet<ObjectId> = HashSet::new();
        let ids: Vec<ObjectId> = self.held.keys().copied().collect();
        for id in ids {
            let h = &self.held[&id];
            let blocked = h.actor.is_some_and(|a| {
                still_actors.contains(&a) || self.lanes.get(&a).is_some_and(|l| l.inflight > 0)
            }) || h
                .deps
                .iter()
                .any(|d| self.inflight.contains_key(d) || still.contains(d));
            if blocked {
                still.insert(id);
                if let Some(a) = h.actor {
                    still_actors.insert(a);
                }
            } else {
                let h = self.held.remove(&id).expect("listed above");
                if let Some(a) = h.actor {
                    self.head_calls.insert(id, a);
                }
                ready.push(h);
            }
        }
        ready
    }
}

impl Session {
    fn direct(&self) -> std::sync::MutexGuard<'_, Direct> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a submission the way it may go: directly to an actor's worker, held behind direct
    /// calls, or through the head. The caller holds the submission lock (`queueing`) and has
    /// recorded the result's cell; `keep` is kept until the submission is sent. Returns the
    /// references the caller drops once it let go of its locks (dropping the last reference to
    /// an object releases it, which takes them).
    #[must_use]
    pub(super) fn route_submission(
        self: &Arc<Self>,
        unfinished: &mut BTreeMap<ObjectId, Unfinished>,
        mut spec: pb::TaskSpec,
        tracked: Option<Unfinished>,
        keep: Vec<Arc<RefInner>>,
        parent: u64,
    ) -> Vec<Arc<RefInner>> {
        let id = ObjectId(spec.task);
        let actor = actor_of(&spec);
        let mut direct = self.direct();
        // Drivers call directly; a worker's tasks go through the head.
        if self.host.is_none() {
            if let Some(actor) = actor {
                if let Some(route) = direct.direct_route(actor, &spec) {
                    let call = pb::DirectCall {
                        spec: Some(spec.clone()),
                        incarnation: route.location.incarnation,
                        lease: 0,
                    };
                    if route.conn.calls.send(call).is_ok() {
                        direct.inflight.insert(
                            id,
                            Inflight {
                                spec,
                                actor: Some(actor),
                                lease: None,
                                location: route.location,
                                released: false,
                                cancelled: false,
                            },
                        );
                        direct.lanes.entry(actor).or_default().inflight += 1;
                        direct.sent += 1;
                        if let Some(t) = tracked {
                            unfinished.insert(id, t);
                        }
                        return keep;
                    }
                    // The stream is gone: forget the route and go through the head.
                    self.drop_routes_to(&mut direct, &route.location.address);
                }
                self.locate(&mut direct, actor);
            } else if let Some(shape) = self.lease_candidate(&mut direct, unfinished, &spec) {
                let alone = unfinished.is_empty() && direct.inflight.is_empty();
                match self.push_leased(&mut direct, shape, spec, alone) {
                    None => {
                        if let Some(t) = tracked {
                            unfinished.insert(id, t);
                        }
                        return keep;
                    }
                    Some(back) => spec = back,
                }
            }
        }
        let deps = spec_deps(&spec);
        if direct.must_wait(actor, &deps) {
            direct.held.insert(
                id,
                Held {
                    spec,
                    actor,
                    deps,
                    keep,
                    released: false,
                },
            );
            return Vec::new();
        }
        if let Some(a) = actor {
            direct.head_calls.insert(id, a);
        }
        if let Some(t) = tracked {
            unfinished.insert(id, t);
        }
        self.send_from(driver_op::Op::Submit(spec), parent);
        keep
    }

    /// Asks the head where `actor` lives, unless a question is out or was asked just now; the
    /// answer opens (or reuses) a stream to its worker.
    fn locate(self: &Arc<Self>, direct: &mut Direct, actor: ObjectId) {
        let lane = direct.lanes.entry(actor).or_default();
        if lane.route.is_some()
            || lane.locating
            || lane.asked.is_some_and(|t| t.elapsed() < RELOCATE_AFTER)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        lane.locating = true;
        lane.asked = Some(Instant::now());
        let session = self.clone();
        runtime.spawn(async move {
            let found = super::Runtime::from_parts(session.clone(), None)
                .lookup_actor(pb::LookupActor {
                    request: 0,
                    name: String::new(),
                    actor: actor.0,
                })
                .await;
            let location = found.ok().and_then(|f| f.location);
            let conn = match &location {
                Some(l) => session.conn_to(&l.address).await,
                None => None,
            };
            let mut direct = session.direct();
            let lane = direct.lanes.entry(actor).or_default();
            lane.locating = false;
            if let (Some(location), Some(conn)) = (location, conn) {
                lane.route = Some(Route { location, conn });
            }
        });
    }

    /// The stream of direct calls to the worker at `address`, opened if need be.
    async fn conn_to(self: &Arc<Self>, address: &str) -> Option<Conn> {
        if let Some(conn) = self.direct().conns.get(address) {
            return Some(conn.clone());
        }
        let channel = match net::connect(address).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(worker = address, "no direct calls to this worker: {e}");
                return None;
            }
        };
        let mut client =
            WorkerClient::with_interceptor(channel, AddAuth::new(self.token.as_deref()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (calls_tx, calls_rx) = mpsc::unbounded_channel();
        let outbound = Batches::new(calls_rx).map(|calls| pb::DirectCalls { calls });
        let mut inbound = match client.call(outbound).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(
                    worker = address,
                    "no direct calls to this worker: {}",
                    status.message()
                );
                return None;
            }
        };
        let conn = Conn { calls: calls_tx };
        {
            let mut direct = self.direct();
            if let Some(existing) = direct.conns.get(address) {
                // Another lookup opened one meanwhile; this one closes when dropped.
                return Some(existing.clone());
            }
            direct.conns.insert(address.to_string(), conn.clone());
        }
        let session = Arc::downgrade(self);
        let address = address.to_string();
        tokio::spawn(async move {
            let why = loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        let Some(session) = session.upgrade() else {
                            return;
                        };
                        for reply in batch.replies {
                            session.direct_reply(reply);
                        }
                    }
                    Ok(None) => break "the worker closed the stream".to_string(),
                    Err(status) => break status.message().to_string(),
                }
            };
            if let Some(session) = session.upgrade() {
                session.direct_conn_lost(&address, &why);
            }
        });
        Some(conn)
    }

    /// Forgets the stream to `address` and every route through it.
    fn drop_routes_to(&self, direct: &mut Direct, address: &str) {
        direct.conns.remove(address);
        for lane in direct.lanes.values_mut() {
            if lane
                .route
                .as_ref()
                .is_some_and(|r| r.location.address == address)
            {
                lane.route = None;
            }
        }
    }

    /// A worker answered a direct call.
    fn direct_reply(self: &Arc<Self>, reply: pb::DirectReply) {
        let id = ObjectId(reply.task);
        match reply.outcome {
            Some(direct_reply::Outcome::Result(result)) => self.direct_done(id, result),
            Some(direct_reply::Outcome::NotHosted(why)) => self.direct_bounced(id, &why),
            None => {}
        }
    }

    /// A direct call ran: its caller learns the outcome, the head records it.
    fn direct_done(self: &Arc<Self>, id: ObjectId, mut result: pb::TaskResult) {
        let mut unfinished = self.queueing();
        let mut direct = self.direct();
        let Some(call) = direct.inflight.remove(&id) else {
            return;
        };
        if let Some(lane) = call.actor.and_then(|a| direct.lanes.get_mut(&a)) {
            lane.inflight = lane.inflight.saturating_sub(1);
        }
        if call.cancelled {
            result.outcome = Some(task_result::Outcome::Error(pb::TaskError {
                kind: ErrorKind::Cancelled.to_proto() as i32,
                task: String::new(),
                message: "cancelled by its caller".into(),
            }));
        }
        let state = match &result.outcome {
            Some(task_result::Outcome::InlineValue(b)) => State::InlineValue(b.clone()),
            Some(task_result::Outcome::StoredSize(size)) => State::Stored(pb::StoredObject {
                size: *size,
                locations: vec![pb::ObjectLocation {
                    worker: call.location.worker,
                    address: call.location.address.clone(),
                    node: call.location.node.clone(),
                    shm_path: String::new(),
                    http_address: call.location.address.clone(),
                }],
            }),
            Some(task_result::Outcome::Error(e)) => State::Error(e.clone()),
            None => return,
        };
        self.settle(id, state);
        unfinished.remove(&id);
        self.send_lazy(driver_op::Op::DirectDone(pb::DirectCallDone {
            spec: Some(call.spec),
            worker: call.location.worker,
            result: Some(result),
            lease: call.lease.as_ref().map_or(0, |(_, l)| *l),
        }));
        if call.released {
            self.send_lazy(driver_op::Op::Release(id.0));
        }
        if let Some((shape, lease)) = call.lease {
            self.leased_task_ended(&mut direct, &shape, lease, false);
        }
        let keep = self.flush_held(&mut unfinished, &mut direct);
        drop((direct, unfinished));
        drop(keep);
    }

    /// A direct call did not run (the actor is not where the route said): it goes through the
    /// head, in its place among the calls held there.
    fn direct_bounced(self: &Arc<Self>, id: ObjectId, why: &str) {
        let mut unfinished = self.queueing();
        let mut direct = self.direct();
        let Some(call) = direct.inflight.remove(&id) else {
            return;
        };
        tracing::debug!(call = %id, "a direct call was not run ({why}); it goes through the head");
        unfinished.remove(&id);
        if let Some(lane) = call.actor.and_then(|a| direct.lanes.get_mut(&a)) {
            lane.inflight = lane.inflight.saturating_sub(1);
            if lane
                .route
                .as_ref()
                .is_some_and(|r| r.location == call.location)
            {
                lane.route = None;
            }
        }
        if let Some((shape, lease)) = &call.lease {
            // The worker runs no task of this shape on a lease (its function submits tasks of
            // its own), or none on this lease (its job was cancelled).
            self.leased_task_ended(&mut direct, shape, *lease, true);
        }
        direct.held.insert(
            id,
            Held {
                spec: call.spec,
                actor: call.actor,
                deps: Vec::new(),
                keep: Vec::new(),
                released: call.released,
            },
        );
        if call.cancelled {
            // Never sent to the head: cancelled before it ran (its cell says so already).
            direct.held.remove(&id);
        }
        let keep = self.flush_held(&mut unfinished, &mut direct);
        drop((direct, unfinished));
        drop(keep);
    }

    /// The stream to a worker broke: its calls in flight fail as calls do whose worker died
    /// under them (they may have run; they are not run again), and routes through it are
    /// forgotten.
    fn direct_conn_lost(self: &Arc<Self>, address: &str, why: &str) {
        let lost: Vec<ObjectId> = {
            let mut direct = self.direct();
            self.drop_routes_to(&mut direct, address);
            direct
                .inflight
                .iter()
                .filter(|(_, c)| c.location.address == address)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in lost {
            let method = {
                let direct = self.direct();
                match direct.inflight.get(&id).map(|c| &c.spec.kind) {
                    Some(Some(task_spec::Kind::ActorCall(c))) => c.method.clone(),
                    Some(Some(task_spec::Kind::Function(_))) => {
                        drop(direct);
                        self.leased_task_lost(id, address, why);
                        continue;
                    }
                    _ => continue,
                }
            };
            let failure = pb::TaskError {
                kind: ErrorKind::ActorDied.to_proto() as i32,
                task: method.clone(),
                message: format!(
                    "the actor's worker at {address} went away while running {method}: {why}"
                ),
            };
            self.direct_failed(id, failure);
        }
    }

    /// Sends the held submissions that need not wait any more, in order; returns their argument
    /// references, for the caller to drop once it let go of its locks.
    #[must_use]
    fn flush_held(
        &self,
        unfinished: &mut BTreeMap<ObjectId, Unfinished>,
        direct: &mut Direct,
    ) -> Vec<Arc<RefInner>> {
        let mut keep = Vec::new();
        for held in direct.release_held() {
            let id = ObjectId(held.spec.task);
            if self.host.is_none() {
                let spec = matches!(held.spec.kind, Some(task_spec::Kind::Function(_)))
                    .then(|| held.spec.clone());
                unfinished.insert(
                    id,
                    Unfinished {
                        spec,
                        released: held.released,
                    },
                );
            }
            self.send(driver_op::Op::Submit(held.spec));
            if held.released {
                self.send(driver_op::Op::Subscribe(id.0));
                self.send(driver_op::Op::Release(id.0));
            }
            keep.extend(held.keep);
        }
        keep
    }

    /// Sets a pending cell's state (a cell already settled, say cancelled, keeps its state).
    fn settle(&self, id: ObjectId, state: State) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell @ ObjectCell::Pending(_)) = objects.get_mut(&id) {
            if let ObjectCell::Pending(waiters) =
                std::mem::replace(cell, ObjectCell::Ready(state.clone()))
            {
                for w in waiters {
                    let _ = w.send(state.clone());
                }
            }
        }
    }

    fn send_cancelled(&self, id: ObjectId) {
        self.settle(
            id,
            State::Error(pb::TaskError {
                kind: ErrorKind::Cancelled.to_proto() as i32,
                task: String::new(),
                message: "cancelled by its caller".into(),
            }),
        );
    }

    /// The session dropped its last reference to `id`: true when the head must not hear of it
    /// yet (a direct call not answered, or a held submission), which then releases it later.
    pub(super) fn release_direct(&self, id: ObjectId) -> bool {
        let mut direct = self.direct();
        if let Some(call) = direct.inflight.get_mut(&id) {
            call.released = true;
            return true;
        }
        if let Some(held) = direct.held.get_mut(&id) {
            held.released = true;
            return true;
        }
        false
    }

    /// The caller cancels `id`: true when it is a direct or held call (the head does not know
    /// it); it fails as cancelled at once.
    pub(super) fn cancel_direct(&self, id: ObjectId) -> bool {
        let held = {
            let mut direct = self.direct();
            if let Some(call) = direct.inflight.get_mut(&id) {
                call.cancelled = true;
                None
            } else if let Some(held) = direct.held.remove(&id) {
                Some(held)
            } else {
                return false;
            }
        };
        drop(held);
        self.send_cancelled(id);
        true
    }

    /// A call that went through the head has its outcome (or never will, the head having
    /// restarted): later calls to its actor may go directly again.
    pub(super) fn head_call_ended(&self, id: ObjectId) {
        let mut direct = self.direct();
        if !direct.head_calls.is_empty() {
            direct.head_calls.remove(&id);
        }
    }

    /// Actor calls and tasks this session sent straight to workers so far.
    pub(super) fn direct_calls(&self) -> u64 {
        self.direct().sent
    }
}

impl Session {
    /// The lease shape of a task that may go on a lease or ask for one: submitted with nothing
    /// else in flight, or while a lease is held. A task of a burst while none is held skips the
    /// shape's computation (it goes through the head), and breaks every shape's run of tasks
    /// awaited one at a time.
    fn lease_candidate(
        &self,
        direct: &mut Direct,
        unfinished: &BTreeMap<ObjectId, Unfinished>,
        spec: &pb::TaskSpec,
    ) -> Option<Shape> {
        let alone = unfinished.is_empty() && direct.inflight.is_empty();
        if !alone && direct.leases.values().all(|s| s.held.is_none()) {
            for slot in direct.leases.values_mut() {
                slot.solo = 0;
            }
            return None;
        }
        lease_shape(spec)
    }

    /// Pushes a plain task onto this session's lease for its shape when one is held with room;
    /// otherwise asks for one (when the tasks of the shape come one at a time, and no request
    /// is out or was refused just now) and hands the task back to go through the head.
    fn push_leased(
        self: &Arc<Self>,
        direct: &mut Direct,
        shape: Shape,
        spec: pb::TaskSpec,
        alone: bool,
    ) -> Option<pb::TaskSpec> {
        let slot = direct.leases.entry(shape.clone()).or_default();
        slot.solo = if alone {
            slot.solo.saturating_add(1)
        } else {
            0
        };
        if let Some(held) = slot.held.as_ref().filter(|_| !slot.revoked) {
            if slot.inflight >= LEASE_DEPTH {
                return Some(spec);
            }
            let call = pb::DirectCall {
                spec: Some(spec.clone()),
                incarnation: 0,
                lease: held.id,
            };
            if held.conn.calls.send(call).is_ok() {
                slot.inflight += 1;
                slot.idle_since = None;
                let (lease, location) = (held.id, held.location.clone());
                direct.inflight.insert(
                    ObjectId(spec.task),
                    Inflight {
                        spec,
                        actor: None,
                        lease: Some((shape, lease)),
                        location,
                        released: false,
                        cancelled: false,
                    },
                );
                direct.sent += 1;
                return None;
            }
            // The stream is gone: the lease goes back, the task through the head.
            let lease = held.id;
            slot.revoked = true;
            if slot.inflight == 0 {
                self.give_back(direct, &shape, lease);
            }
            return Some(spec);
        }
        let asked_lately = slot
            .refused
            .is_some_and(|t| t.elapsed() < LEASE_RETRY_AFTER);
        if slot.held.is_none()
            && !slot.requesting
            && !slot.never
            && !asked_lately
            && slot.solo >= LEASE_AFTER_SOLO
        {
            self.request_lease(direct, shape);
        }
        Some(spec)
    }

    /// Asks the head for a lease of `shape`; the answer opens (or reuses) the stream to the
    /// worker and starts the watch that returns the lease once idle.
    fn request_lease(self: &Arc<Self>, direct: &mut Direct, shape: Shape) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        direct.lease_requests.insert(request, tx);
        direct.leases.entry(shape.clone()).or_default().requesting = true;
        let (function, slots, custom) = shape.clone();
        self.send(driver_op::Op::Lease(pb::LeaseRequest {
            request,
            function,
            resources: Some(pb::Resources {
                slots,
                custom: custom.into_iter().collect(),
            }),
        }));
        let session = self.clone();
        runtime.spawn(async move {
            let grant = rx.await.ok();
            let granted = grant.as_ref().and_then(|g| {
                let location = g.location.clone()?;
                (g.lease != 0).then_some((g.lease, location))
            });
            let conn = match &granted {
                Some((_, location)) => session.conn_to(&location.address).await,
                None => None,
            };
            let mut direct = session.direct();
            let slot = direct.leases.entry(shape.clone()).or_default();
            slot.requesting = false;
            match (granted, conn) {
                (Some((id, location)), Some(conn)) => {
                    slot.held = Some(Leased { id, location, conn });
                    slot.revoked = false;
                    slot.idle_since = Some(Instant::now());
                    drop(direct);
                    session.watch_idle_lease(shape, id);
                }
                (Some((id, _)), None) => {
                    // Granted, but the worker cannot be reached: give it back.
                    slot.refused = Some(Instant::now());
                    drop(direct);
                    session.send(driver_op::Op::ReturnLease(id));
                }
                (None, _) => slot.refused = Some(Instant::now()),
            }
        });
    }

    /// Returns the lease `id` of `shape` once it had nothing in flight for [`LEASE_IDLE`].
    fn watch_idle_lease(self: &Arc<Self>, shape: Shape, id: u64) {
        let session = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_IDLE).await;
                let Some(session) = session.upgrade() else {
                    return;
                };
                let mut direct = session.direct();
                let Some(slot) = direct.leases.get(&shape) else {
                    return;
                };
                if slot.held.as_ref().is_none_or(|h| h.id != id) {
                    return;
                }
                let idle = slot.inflight == 0
                    && slot.idle_since.is_some_and(|t| t.elapsed() >= LEASE_IDLE);
                if idle {
                    direct.leases.remove(&shape);
                    drop(direct);
                    session.send(driver_op::Op::ReturnLease(id));
                    return;
                }
            }
        });
    }

    /// A task on lease `lease` ended (or, `refused`, the worker takes no more on it): a revoked
    /// lease with nothing left in flight goes back.
    fn leased_task_ended(&self, direct: &mut Direct, shape: &Shape, lease: u64, refused: bool) {
        let Some(slot) = direct.leases.get_mut(shape) else {
            return;
        };
        if slot.held.as_ref().is_none_or(|h| h.id != lease) {
            return;
        }
        slot.inflight = slot.inflight.saturating_sub(1);
        if refused {
            slot.revoked = true;
            slot.never = true;
        }
        if slot.inflight == 0 {
            slot.idle_since = Some(Instant::now());
            if slot.revoked {
                self.give_back(direct, shape, lease);
            }
        }
    }

    /// Returns a revoked lease, and asks for none of its shape for a while.
    fn give_back(&self, direct: &mut Direct, shape: &Shape, lease: u64) {
        if let Some(slot) = direct.leases.get_mut(shape) {
            *slot = LeaseSlot {
                refused: Some(Instant::now()),
                never: slot.never,
                ..LeaseSlot::default()
            };
        }
        self.send(driver_op::Op::ReturnLease(lease));
    }

    /// The head answered a lease request.
    pub(super) fn lease_granted(&self, grant: pb::LeaseGranted) {
        let waiting = self.direct().lease_requests.remove(&grant.request);
        match waiting {
            Some(tx) => {
                if let Err(grant) = tx.send(grant) {
                    // Nobody waits any more: give it back.
                    if grant.lease != 0 {
                        self.send(driver_op::Op::ReturnLease(grant.lease));
                    }
                }
            }
            None if grant.lease != 0 => self.send(driver_op::Op::ReturnLease(grant.lease)),
            None => {}
        }
    }

    /// The head revoked a lease: nothing more is pushed on it; it goes back once its tasks
    /// ended (at once when none is in flight).
    pub(super) fn lease_revoked(&self, lease: u64) {
        let mut direct = self.direct();
        let shape = direct
            .leases
            .iter()
            .find(|(_, s)| s.held.as_ref().is_some_and(|h| h.id == lease))
            .map(|(shape, _)| shape.clone());
        let Some(shape) = shape else {
            // Not held (already returned, or its grant not seen yet): say it is back.
            self.send(driver_op::Op::ReturnLease(lease));
            return;
        };
        let slot = direct.leases.get_mut(&shape).expect("found above");
        slot.revoked = true;
        if slot.inflight == 0 {
            self.give_back(&mut direct, &shape, lease);
        }
    }

    /// Forgets every lease (a head that restarted knows none of them).
    pub(super) fn forget_leases(&self) {
        let mut direct = self.direct();
        direct.leases.clear();
        direct.lease_requests.clear();
    }

    /// The stream to a leased task's worker broke while it ran: it is retried through the head
    /// as a task whose worker died under the head is (one retry fewer, counted there), or fails
    /// as such a task does when no retries are left.
    fn leased_task_lost(self: &Arc<Self>, id: ObjectId, address: &str, why: &str) {
        let mut unfinished = self.queueing();
        let mut direct = self.direct();
        let Some(mut call) = direct.inflight.remove(&id) else {
            return;
        };
        if let Some((shape, lease)) = &call.lease {
            if direct
                .leases
                .get(shape)
                .is_some_and(|s| s.held.as_ref().is_some_and(|h| h.id == *lease))
            {
                self.give_back(&mut direct, shape, *lease);
            }
        }
        // Read as the head reads it (no options at all mean every default).
        let retries =
            flotilla_core::options::ResolvedOptions::from(call.spec.options.as_ref()).max_retries;
        let options = call.spec.options.get_or_insert_with(|| pb::TaskOptions {
            max_retries: -1,
            ..Default::default()
        });
        if call.cancelled {
            drop((direct, unfinished));
            return;
        }
        if retries > 0 {
            options.max_retries = i32::try_from(retries - 1).unwrap_or(i32::MAX);
            if let Some(t) = unfinished.get_mut(&id) {
                t.spec = Some(call.spec.clone());
            }
            let mut lazy = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
            for waiting in lazy.drain(..) {
                let _ = self.ops_tx.send(waiting);
            }
            let _ = self.ops_tx.send(pb::DriverOp {
                op: Some(driver_op::Op::Submit(call.spec)),
                parent: 0,
                lost_on: address.to_string(),
            });
            if call.released {
                for op in [driver_op::Op::Subscribe(id.0), driver_op::Op::Release(id.0)] {
                    let _ = self.ops_tx.send(pb::DriverOp {
                        op: Some(op),
                        parent: 0,
                        lost_on: String::new(),
                    });
                }
            }
            return;
        }
        let name = match &call.spec.kind {
            Some(task_spec::Kind::Function(f)) => f.clone(),
            _ => String::new(),
        };
        let failure = pb::TaskError {
            kind: ErrorKind::WorkerDied.to_proto() as i32,
            task: name.clone(),
            message: format!(
                "worker {address} died while running {name} and no retries were left ({why})"
            ),
        };
        direct.inflight.insert(id, call);
        drop((direct, unfinished));
        self.direct_failed(id, failure);
    }

    /// A direct call or leased task ended without an outcome from its worker: it failed so.
    fn direct_failed(self: &Arc<Self>, id: ObjectId, failure: pb::TaskError) {
        self.direct_done(
            id,
            pb::TaskResult {
                task: id.0,
                attempt: 0,
                outcome: Some(task_result::Outcome::Error(failure)),
                run_micros: 0,
                contained: Vec::new(),
            },
        );
    }
}
