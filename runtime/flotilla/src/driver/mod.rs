//! The driver: [`Runtime`], a session with the head through which a program submits tasks,
//! creates actors, puts and gets objects.
//!
//! A driver connects with [`Runtime::connect`]; [`Runtime::init`] (in [`crate::local`]) connects
//! to `FLOTILLA_HEAD` or starts an in-process cluster. Inside a worker, tasks get a runtime bound
//! to the worker (`host`): its store serves their puts and gets, and a task that waits lends its
//! slots back over the worker's own stream.

pub mod actor;
mod direct;
pub(crate) mod host;
pub mod object_ref;
pub mod options;
mod put;
mod reconnect;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use flotilla_core::{ObjectId, SessionId};
use flotilla_proto::{
    contract::ENV_JOB,
    v1::{self as pb, driver_op, object_state, task_spec},
    PROTOCOL_VERSION,
};
use futures::{future::BoxFuture, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

pub use self::reconnect::RECONNECT_WINDOW;
use self::{
    host::{Lending, TaskBinding, TaskHost},
    object_ref::{ArgList, ObjectRef, RefInner},
    options::TaskOptions,
    reconnect::{OpsQueue, Unfinished},
};
use crate::{
    codec,
    error::{Error, ErrorKind, Result},
    net::HeadRpc,
    objects::Peers,
};

type State = object_state::State;

/// Longest a lazy op (a release, a direct call's report) waits for company before it is sent.
const LINGER: Duration = Duration::from_millis(2);

/// Sends a session's lazy ops [`LINGER`] after the first of them, while the session lives.
fn spawn_lazy_flusher(session: &Arc<Session>) {
    let weak = Arc::downgrade(session);
    let due = session.lazy_due.clone();
    tokio::spawn(async move {
        loop {
            due.notified().await;
            tokio::time::sleep(LINGER).await;
            let Some(session) = weak.upgrade() else {
                return;
            };
            session.flush_lazy();
        }
    });
}

/// How long a driver waits for an object before it asks the head why and says so.
const SILENT_WAIT: Duration = Duration::from_secs(5);
/// How long that question may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// What this session knows of one object: waiters until its state arrives, then the state.
enum ObjectCell {
    Pending(Vec<oneshot::Sender<State>>),
    Ready(State),
}

/// A cluster a runtime started for itself and stops when it shuts down (the in-process local
/// cluster of [`Runtime::init`]).
pub(crate) trait OwnedCluster: Send {
    /// Stops the cluster's workers and head.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// One session with the head, shared by every clone of a [`Runtime`] and by its object refs.
pub(crate) struct Session {
    id: SessionId,
    seq: AtomicU64,
    ops_tx: mpsc::UnboundedSender<pb::DriverOp>,
    /// Ops that wait for the next op or for [`LINGER`] ([`Session::send_lazy`]).
    lazy: Mutex<Vec<pb::DriverOp>>,
    /// Told when `lazy` stops being empty.
    lazy_due: Arc<tokio::sync::Notify>,
    /// Where `ops_tx` leads; the current connection's stream takes from it.
    queue: Arc<Mutex<OpsQueue>>,
    /// A driver's tasks whose results it has not learned, in submission order, to submit again
    /// to a head that restarted. Submissions hold this lock while they queue their op.
    unfinished: Mutex<BTreeMap<ObjectId, Unfinished>>,
    objects: Mutex<HashMap<ObjectId, ObjectCell>>,
    lookups: Mutex<HashMap<u64, oneshot::Sender<pb::ActorFound>>>,
    /// Actor calls made straight to workers, and submissions waiting for them.
    direct: Mutex<direct::Direct>,
    closed: AtomicBool,
    close_reason: Mutex<String>,
    head: Mutex<HeadRpc>,
    head_address: String,
    /// The head process this session last spoke to.
    head_instance: Mutex<String>,
    token: Option<String>,
    job: String,
    peers: Peers,
    host: Option<TaskHost>,
    cluster: Mutex<Option<Box<dyn OwnedCluster>>>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
}

impl Session {
    /// The submission lock: whoever records an object and queues its op holds it, so a resync
    /// sees both or neither.
    fn queueing(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectId, Unfinished>> {
        self.unfinished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an op for the head, after the ops waiting in `lazy`.
    fn send(&self, op: driver_op::Op) {
        self.send_from(op, 0);
    }

    /// Queues an op for the head, after the ops waiting in `lazy`; `parent` is the running task
    /// that submits it from inside a worker (0 for a driver), whose job the new task joins.
    fn send_from(&self, op: driver_op::Op, parent: u64) {
        let mut lazy = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        for waiting in lazy.drain(..) {
            let _ = self.ops_tx.send(waiting);
        }
        let _ = self.ops_tx.send(pb::DriverOp {
            op: Some(op),
            parent,
            lost_on: String::new(),
        });
    }

    /// Queues an op nothing waits for (a release, a direct call's report): it goes with the next
    /// op, or after [`LINGER`], so a driver making calls one at a time wakes the head once per
    /// batch of them rather than once per call.
    fn send_lazy(&self, op: driver_op::Op) {
        let mut lazy = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        lazy.push(pb::DriverOp {
            op: Some(op),
            parent: 0,
            lost_on: String::new(),
        });
        if lazy.len() == 1 {
            self.lazy_due.notify_one();
        }
    }

    /// Sends the lazy ops now.
    fn flush_lazy(&self) {
        let mut lazy = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        for waiting in lazy.drain(..) {
            let _ = self.ops_tx.send(waiting);
        }
    }

    pub(crate) fn release(&self, id: ObjectId, owned: bool) {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        // A direct call's result, or a held submission's, is released once the head knows it.
        if owned && self.release_direct(id) {
            return;
        }
        if owned {
            let mut unfinished = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(task) = unfinished.get_mut(&id) {
                // Still needed to submit it again after a head restart, until the head says it
                // finished: ask to be told.
                task.released = true;
                self.send(driver_op::Op::Subscribe(id.0));
            }
            self.send_lazy(driver_op::Op::Release(id.0));
        }
    }

    /// Tells the head that `outer`'s value holds `refs`, before any of them can be released
    /// (releases go on this same stream, after). Returns the distinct ids.
    pub(crate) fn report_contained(&self, outer: ObjectId, refs: &[Arc<RefInner>]) -> Vec<u64> {
        let mut ids: Vec<u64> = refs.iter().map(|r| r.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        self.send(driver_op::Op::Contained(pb::ContainedRefs {
            object: outer.0,
            refs: ids.clone(),
        }));
        ids
    }

    fn resolve_event(&self, state: pb::ObjectState) {
        let Some(value) = state.state else { return };
        let id = ObjectId(state.object);
        // A task's result: its cell was waiting, or every reference to it was dropped (and the
        // session asked to hear of it so as to stop keeping its spec).
        let settles_task = {
            let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            match objects.get_mut(&id) {
                Some(cell) => match std::mem::replace(cell, ObjectCell::Ready(value.clone())) {
                    ObjectCell::Pending(waiters) => {
                        for w in waiters {
                            let _ = w.send(value.clone());
                        }
                        true
                    }
                    ObjectCell::Ready(_) => false,
                },
                None => true,
            }
        };
        self.head_call_ended(id);
        // Taken after the objects' lock, never inside it; a resync in between sees the cell
        // ready and does not submit the task again.
        if settles_task && self.host.is_none() {
            self.unfinished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }

    fn found_actor(&self, found: pb::ActorFound) {
        let tx = self
            .lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&found.request);
        if let Some(tx) = tx {
            let _ = tx.send(found);
        }
    }

    fn close(&self, reason: String) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        // Waiters see their senders dropped and report the reason.
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        for cell in objects.values_mut() {
            if let ObjectCell::Pending(waiters) = cell {
                waiters.clear();
            }
        }
        self.lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn shutdown_error(&self) -> Error {
        Error::Shutdown(
            self.close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends the lazy ops' flusher.
        self.lazy_due.notify_one();
    }
}

/// A session with a Flotilla cluster: submit tasks, create actors, put and get objects.
///
/// Cheap to clone. Inside a task, the runtime a function receives is bound to that task, so a
/// `get` that has to wait lends the task's slot to other work (as Ray does).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) session: Arc<Session>,
    binding: Option<TaskBinding>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Runtime(session {} at {})",
            self.session.id.0, self.session.head_address
        )
    }
}

impl Runtime {
    /// Connects to the head at `address` (`host:port`).
    pub async fn connect(address: &str, token: Option<&str>) -> Result<Runtime> {
        let job = std::env::var(ENV_JOB).unwrap_or_default();
        Self::open(address, token, &job, None).await
    }

    /// Connects to the head at `address` as a driver of `job`: its tasks count for the job in
    /// the head's status and metrics, and cancelling the job at the head cancels them.
    pub async fn connect_for_job(address: &str, token: Option<&str>, job: &str) -> Result<Runtime> {
        Self::open(address, token, job, None).await
    }

    /// Opens a session: a driver's (`host` is `None`), or the one a worker's tasks share.
    pub(crate) async fn open(
        address: &str,
        token: Option<&str>,
        job: &str,
        host: Option<(TaskHost, String)>,
    ) -> Result<Runtime> {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (host, worker_name) = match host {
            Some((host, name)) => (Some(host), name),
            None => (None, String::new()),
        };
        let hello = pb::DriverHello {
            protocol_version: PROTOCOL_VERSION,
            job: job.to_string(),
            worker_name,
            resume_session: 0,
            holds: Vec::new(),
        };
        let queue = Arc::new(Mutex::new(OpsQueue {
            rx: ops_rx,
            generation: 0,
        }));
        let conn = reconnect::connect(address, token, hello, Vec::new(), queue.clone(), 0)
            .await
            .map_err(|failed| failed.error)?;
        let session = Arc::new(Session {
            id: SessionId(conn.info.session),
            seq: AtomicU64::new(0),
            ops_tx,
            lazy: Mutex::new(Vec::new()),
            lazy_due: Arc::new(tokio::sync::Notify::new()),
            queue,
            unfinished: Mutex::new(BTreeMap::new()),
            objects: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            direct: Mutex::new(direct::Direct::default()),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
            head: Mutex::new(conn.head),
            head_address: address.to_string(),
            head_instance: Mutex::new(conn.info.head_instance),
            token: token.map(str::to_string),
            job: job.to_string(),
            peers: Peers::new(token),
            host,
            cluster: Mutex::new(None),
            stop_tx: Mutex::new(Some(conn.stop_tx)),
        });
        reconnect::spawn_events(&session, conn.inbound);
        spawn_lazy_flusher(&session);
        Ok(Runtime {
            session,
            binding: None,
        })
    }

    /// Stops `cluster` when this runtime shuts down.
    pub(crate) fn own_cluster(&self, cluster: Box<dyn OwnedCluster>) {
        *self
            .session
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cluster);
    }

    pub(crate) fn from_parts(session: Arc<Session>, binding: Option<TaskBinding>) -> Runtime {
        Runtime { session, binding }
    }

    pub(crate) fn bound_to(&self, binding: TaskBinding) -> Runtime {
        Runtime {
            session: self.session.clone(),
            binding: Some(binding),
        }
    }

    /// The head's address.
    pub fn head_address(&self) -> &str {
        &self.session.head_address
    }

    /// This session's number.
    pub fn session(&self) -> u32 {
        self.session.id.0
    }

    /// How many actor calls and tasks this session sent straight to workers (actor calls to the
    /// actors' workers, tasks on slots it leased); the rest went through the head.
    pub fn direct_calls(&self) -> u64 {
        self.session.direct_calls()
    }

    fn mint(&self) -> ObjectId {
        ObjectId::new(
            self.session.id,
            self.session.seq.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }

    fn new_ref<T>(&self, id: ObjectId, cell: ObjectCell) -> ObjectRef<T> {
        self.session
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, cell);
        ObjectRef::new(
            Arc::new(RefInner {
                id,
                owned: true,
                session: self.session.clone(),
                _parent: None,
            }),
            self.binding.clone(),
        )
    }

    fn failed_ref<T>(&self, id: ObjectId, task: &str, e: &Error) -> ObjectRef<T> {
        let err = pb::TaskError {
            kind: ErrorKind::Invalid.to_proto() as i32,
            task: task.into(),
            message: e.to_string(),
        };
        // Not known to the head: nothing to release there.
        self.session
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, ObjectCell::Ready(State::Error(err)));
        self.borrowed_ref(id, None)
    }

    /// Submits a task of any kind; used by the generated code.
    pub(crate) fn submit<T>(
        &self,
        kind: task_spec::Kind,
        label: &str,
        signature: &str,
        args: ArgList,
        options: Option<pb::TaskOptions>,
    ) -> ObjectRef<T> {
        let id = self.mint();
        if let Some(e) = args.error {
            return self.failed_ref(id, label, &e);
        }
        let spec = pb::TaskSpec {
            task: id.0,
            kind: Some(kind),
            args: args.args,
            options,
            signature: signature.to_string(),
            nested: args.nested,
        };
        let tracked = self.session.host.is_none().then(|| Unfinished {
            spec: matches!(spec.kind, Some(task_spec::Kind::Function(_))).then(|| spec.clone()),
            released: false,
        });
        let mut unfinished = self.session.queueing();
        let r = self.new_ref(id, ObjectCell::Pending(Vec::new()));
        // Argument references may be released only after the submission is queued (or sent
        // directly): the routing keeps them until then, and hands back those to drop now. A
        // task submitting through its worker names itself: the new task counts for its job.
        let parent = self.binding.as_ref().map_or(0, |b| b.task.0);
        let keep = self
            .session
            .route_submission(&mut unfinished, spec, tracked, args.keep, parent);
        drop(unfinished);
        drop(keep);
        r
    }

    /// Calls a registered remote function by name; `#[flotilla::remote]` generates typed
    /// wrappers around this.
    pub fn call_function<T>(
        &self,
        name: &str,
        signature: &str,
        args: ArgList,
        options: Option<&TaskOptions>,
    ) -> ObjectRef<T> {
        self.submit(
            task_spec::Kind::Function(name.to_string()),
            name,
            signature,
            args,
            options.map(TaskOptions::to_proto),
        )
    }

    async fn resolve(&self, id: ObjectId) -> Result<State> {
        let rx = {
            let mut objects = self
                .session
                .objects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match objects.get_mut(&id) {
                Some(ObjectCell::Ready(state)) => return Ok(state.clone()),
                Some(ObjectCell::Pending(waiters)) => {
                    if self.session.closed.load(Ordering::SeqCst) {
                        return Err(self.session.shutdown_error());
                    }
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    rx
                }
                None => {
                    if self.session.closed.load(Ordering::SeqCst) {
                        return Err(self.session.shutdown_error());
                    }
                    let (tx, rx) = oneshot::channel();
                    objects.insert(id, ObjectCell::Pending(vec![tx]));
                    self.session.send(driver_op::Op::Subscribe(id.0));
                    rx
                }
            }
        };
        // A task waiting here lends its slots to other work until the value arrives.
        let lending = self.lend();
        let result = self.await_state(id, rx).await;
        if let Some(lending) = lending {
            lending.finish().await;
        }
        result
    }

    /// Waits for an object's state. A driver still waiting after [`SILENT_WAIT`] is told why, if
    /// the head says: no worker registered, or a head that does not answer.
    async fn await_state(&self, id: ObjectId, mut rx: oneshot::Receiver<State>) -> Result<State> {
        if self.session.host.is_none() {
            tokio::select! {
                state = &mut rx => return state.map_err(|_| self.session.shutdown_error()),
                () = tokio::time::sleep(SILENT_WAIT) => self.explain_wait(id).await,
            }
        }
        rx.await.map_err(|_| self.session.shutdown_error())
    }

    /// Warns, once per wait, of what keeps an object from being ready, when the head knows.
    async fn explain_wait(&self, id: ObjectId) {
        let head = &self.session.head_address;
        match tokio::time::timeout(STATUS_TIMEOUT, self.status()).await {
            Err(_) => tracing::warn!(
                object = %id,
                "still waiting after {SILENT_WAIT:?}: the head at {head} did not answer within {STATUS_TIMEOUT:?}"
            ),
            Ok(Err(e)) => tracing::warn!(
                object = %id,
                "still waiting after {SILENT_WAIT:?}: the head at {head} cannot be asked why: {e}"
            ),
            Ok(Ok(status)) if status.workers.is_empty() => tracing::warn!(
                object = %id,
                "still waiting after {SILENT_WAIT:?}: no worker is registered at the head at {head}; the work runs once one joins"
            ),
            Ok(Ok(status)) if status.tasks_running == 0 && status.tasks_pending > 0 => {
                tracing::warn!(
                    object = %id,
                    pending = status.tasks_pending,
                    "still waiting after {SILENT_WAIT:?}: tasks are queued but none runs; no worker may offer the slots or resources they ask for"
                )
            }
            Ok(Ok(_)) => {}
        }
    }

    /// Lends the bound task's slots back to its worker, when this runtime is bound to one.
    fn lend(&self) -> Option<Lending> {
        let binding = self.binding.as_ref()?;
        let host = self.session.host.as_ref()?;
        Some(Lending::start(binding, host))
    }

    async fn value_bytes(&self, id: ObjectId) -> Result<Bytes> {
        match self.resolve(id).await? {
            State::InlineValue(b) => Ok(b),
            State::Stored(stored) => match self.fetch(id, &stored).await {
                // The locations we were told may be stale: a drained worker went away after its
                // objects were copied elsewhere. Ask the head where the object is now, once.
                Err(e) if e.kind() == Some(ErrorKind::ObjectLost) => {
                    self.forget_state(id);
                    match self.resolve(id).await? {
                        State::InlineValue(b) => Ok(b),
                        State::Stored(fresh) => self.fetch(id, &fresh).await,
                        State::Error(e) => Err(Error::from_proto(&e)),
                    }
                }
                other => other,
            },
            State::Error(e) => Err(Error::from_proto(&e)),
        }
    }

    /// Drops what this session knows of a ready object and subscribes to its current state.
    fn forget_state(&self, id: ObjectId) {
        let mut objects = self
            .session
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(cell @ ObjectCell::Ready(_)) = objects.get_mut(&id) {
            *cell = ObjectCell::Pending(Vec::new());
            self.session.send(driver_op::Op::Subscribe(id.0));
        }
    }

    async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        if let Some(host) = &self.session.host {
            if let Some(b) = host.store.get(id).await? {
                return Ok(b);
            }
        }
        self.session.peers.fetch(id, stored).await
    }

    /// Waits for the value of an object.
    ///
    /// References inside the value decode as handles that keep `r`'s object alive (which holds
    /// what they point to) while they live.
    pub async fn get<T: DeserializeOwned + 'static>(&self, r: &ObjectRef<T>) -> Result<T> {
        let bytes = self.value_bytes(r.id()).await?;
        object_ref::decoding_within(self, Some(r.inner.clone()), || codec::decode(&bytes))
    }

    /// Waits at most `timeout` for the value of an object; [`Error::Timeout`] after that (the
    /// task keeps running; get it again later, or cancel it).
    pub async fn get_timeout<T: DeserializeOwned + 'static>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<T> {
        tokio::time::timeout(timeout, self.get(r))
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// Waits for the values of many objects, in order.
    pub async fn get_all<T: DeserializeOwned + 'static>(
        &self,
        refs: impl IntoIterator<Item = impl std::borrow::Borrow<ObjectRef<T>>>,
    ) -> Result<Vec<T>> {
        let refs: Vec<_> = refs.into_iter().collect();
        let mut out = Vec::with_capacity(refs.len());
        for r in &refs {
            out.push(self.get(r.borrow()).await?);
        }
        Ok(out)
    }

    /// Waits until `n` of `refs` are ready (or `timeout` passes); returns (ready, not ready),
    /// each in the order given.
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<ObjectRef<T>>, Vec<ObjectRef<T>>)> {
        let n = n.min(refs.len());
        let mut pending: futures::stream::FuturesUnordered<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rt = Runtime {
                    session: self.session.clone(),
                    binding: None,
                };
                let id = r.id();
                async move { (i, rt.resolve(id).await) }
            })
            .collect();
        let mut ready = vec![false; refs.len()];
        let mut count = 0;
        let collect = async {
            while count < n {
                match pending.next().await {
                    Some((i, Ok(_))) => {
                        ready[i] = true;
                        count += 1;
                    }
                    Some((_, Err(e))) => return Err(e),
                    None => break,
                }
            }
            Ok(())
        };
        // The per-object waits are unbound; a task lends its slots once for the whole wait.
        let lending = self.lend();
        let outcome = match timeout {
            Some(t) => tokio::time::timeout(t, collect).await.unwrap_or(Ok(())),
            None => collect.await,
        };
        if let Some(lending) = lending {
            lending.finish().await;
        }
        outcome?;
        drop(pending);
        let (mut yes, mut no) = (Vec::new(), Vec::new());
        for (i, r) in refs.into_iter().enumerate() {
            if ready[i] {
                yes.push(r);
            } else {
                no.push(r);
            }
        }
        Ok((yes, no))
    }

    /// Cancels the task behind a reference: queued tasks never run, running ones are told to stop
    /// (an `async fn` stops at its next await; a plain function runs on but its result is dropped).
    pub fn cancel<T>(&self, r: &ObjectRef<T>) {
        if self.session.cancel_direct(r.id()) {
            self.session
                .unfinished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&r.id());
            return;
        }
        self.session
            .unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&r.id());
        self.session.send(driver_op::Op::Cancel(r.id().0));
    }

    /// The cluster's status: workers, slots, queue, objects.
    pub async fn status(&self) -> Result<pb::StatusReply> {
        let mut head = self
            .session
            .head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(head.status(pb::StatusRequest {}).await?.into_inner())
    }

    pub(crate) async fn lookup_actor_id(&self, name: &str) -> Result<pb::ActorFound> {
        self.lookup_actor(pb::LookupActor {
            request: 0,
            name: name.to_string(),
            actor: 0,
        })
        .await
    }

    /// Asks the head about an actor, by name or by id.
    async fn lookup_actor(&self, mut lookup: pb::LookupActor) -> Result<pb::ActorFound> {
        let request = self.session.seq.fetch_add(1, Ordering::Relaxed) + 1;
        lookup.request = request;
        let (tx, rx) = oneshot::channel();
        {
            let mut lookups = self
                .session
                .lookups
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // `close` clears lookups after setting `closed`: check under the same lock.
            if self.session.closed.load(Ordering::SeqCst) {
                return Err(self.session.shutdown_error());
            }
            lookups.insert(request, tx);
        }
        self.session.send(driver_op::Op::LookupActor(lookup));
        rx.await.map_err(|_| self.session.shutdown_error())
    }

    pub(crate) fn borrowed_ref<T>(
        &self,
        id: ObjectId,
        parent: Option<Arc<RefInner>>,
    ) -> ObjectRef<T> {
        ObjectRef::new(
            Arc::new(RefInner {
                id,
                owned: false,
                session: self.session.clone(),
                _parent: parent,
            }),
            self.binding.clone(),
        )
    }

    /// Ends the session (the head cancels what is left of its work and frees its objects) and
    /// stops the local cluster, if this runtime started one.
    pub async fn shutdown(&self) {
        // What waited for company goes first: the head counts every direct call.
        self.session.flush_lazy();
        // Closed first, so the end of the stream is not taken for a lost head.
        self.session.close("the runtime was shut down".into());
        if let Some(stop) = self
            .session
            .stop_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        let cluster = self
            .session
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
    }
}
