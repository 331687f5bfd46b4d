//! The driver side: [`Runtime`], a session with the head through which a program submits tasks,
//! creates actors, puts and gets objects.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use flotilla_core::{ObjectId, SessionId};
use flotilla_proto::{
    v1::{
        self as pb, driver_event, driver_op, head_client::HeadClient, object_state, put_object,
        task_spec,
    },
    PROTOCOL_VERSION,
};
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    cluster::LocalCluster,
    codec,
    error::{Error, ErrorKind, Result},
    object_ref::{ArgList, ObjectRef, RefInner},
    peer::Peers,
    registry::TaskOptions,
    store::ObjectStore,
    transport::{self, Batches, INLINE_MAX_BYTES, MAX_MESSAGE_BYTES},
};
use flotilla_proto::auth::AddAuth;

type State = object_state::State;

enum Slot {
    Pending(Vec<oneshot::Sender<State>>),
    Ready(State),
}

/// The store of the worker a runtime lives in (for tasks that submit tasks).
pub(crate) struct LocalStore {
    pub(crate) store: Arc<ObjectStore>,
    pub(crate) worker: u32,
    pub(crate) address: String,
    pub(crate) http_address: String,
    pub(crate) node: String,
}

/// The task a runtime handle is bound to, so a blocking `get` lends the task's slots back.
#[derive(Clone)]
pub(crate) struct TaskBinding {
    pub(crate) task: ObjectId,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) permits: u32,
}

/// Slots a blocked task lent back to its worker; taken back when the wait ends, also when the
/// waiting future is dropped (a cancelled task, or `wait` returning early).
struct Lending {
    binding: Option<TaskBinding>,
    inner: Arc<ClientInner>,
}

impl Lending {
    fn start(binding: &TaskBinding, inner: &Arc<ClientInner>) -> Lending {
        inner.send(driver_op::Op::Blocked(binding.task.0));
        binding.slots.add_permits(binding.permits as usize);
        Lending {
            binding: Some(binding.clone()),
            inner: inner.clone(),
        }
    }

    async fn finish(mut self) {
        if let Some(b) = self.binding.take() {
            if let Ok(permit) = b.slots.acquire_many(b.permits).await {
                permit.forget();
            }
            self.inner.send(driver_op::Op::Unblocked(b.task.0));
        }
    }
}

impl Drop for Lending {
    fn drop(&mut self) {
        let Some(b) = self.binding.take() else { return };
        self.inner.send(driver_op::Op::Unblocked(b.task.0));
        let taken = b.slots.forget_permits(b.permits as usize);
        let owed = b.permits as usize - taken;
        if owed > 0 {
            // Busy now: take the rest back as soon as they are released.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(permit) = b.slots.acquire_many(owed as u32).await {
                        permit.forget();
                    }
                });
            }
        }
    }
}

pub(crate) type HeadRpc = HeadClient<InterceptedService<Channel, AddAuth>>;

pub(crate) struct ClientInner {
    session: SessionId,
    seq: AtomicU64,
    ops_tx: mpsc::UnboundedSender<pb::DriverOp>,
    objects: Mutex<HashMap<ObjectId, Slot>>,
    lookups: Mutex<HashMap<u64, oneshot::Sender<pb::ActorFound>>>,
    closed: AtomicBool,
    close_reason: Mutex<String>,
    head: HeadRpc,
    head_address: String,
    pub(crate) peers: Peers,
    pub(crate) local: Option<LocalStore>,
    cluster: Mutex<Option<LocalCluster>>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
}

impl ClientInner {
    fn send(&self, op: driver_op::Op) {
        let _ = self.ops_tx.send(pb::DriverOp { op: Some(op) });
    }

    pub(crate) fn release(&self, id: ObjectId, owned: bool) {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if owned {
            self.send(driver_op::Op::Release(id.0));
        }
    }

    fn resolve_event(&self, state: pb::ObjectState) {
        let Some(value) = state.state else { return };
        let id = ObjectId(state.object);
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = objects.get_mut(&id) {
            if let Slot::Pending(waiters) = std::mem::replace(slot, Slot::Ready(value.clone())) {
                for w in waiters {
                    let _ = w.send(value.clone());
                }
            }
        }
    }

    fn close(&self, reason: String) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        // Waiters see their senders dropped and report the reason.
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        for slot in objects.values_mut() {
            if let Slot::Pending(waiters) = slot {
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

/// A session with a Flotilla cluster: submit tasks, create actors, put and get objects.
///
/// Cheap to clone. Inside a task, the runtime a function receives is bound to that task, so a
/// `get` that has to wait lends the task's slot to other work (as Ray does).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<ClientInner>,
    binding: Option<TaskBinding>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Runtime(session {} at {})",
            self.inner.session.0, self.inner.head_address
        )
    }
}

impl Runtime {
    /// Connects to `FLOTILLA_HEAD`, or, when it is unset, starts a local cluster in this process
    /// (one worker with `FLOTILLA_SLOTS` slots, default: the CPUs available).
    pub async fn init() -> Result<Runtime> {
        match std::env::var("FLOTILLA_HEAD")
            .ok()
            .filter(|a| !a.is_empty())
        {
            Some(address) => {
                Runtime::connect(
                    &address,
                    flotilla_proto::contract::token_from_env().as_deref(),
                )
                .await
            }
            None => {
                let cluster = LocalCluster::start(crate::cluster::LocalOptions::from_env()).await?;
                let rt = Runtime::connect(&cluster.address, cluster.token.as_deref()).await?;
                *rt.inner.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster);
                Ok(rt)
            }
        }
    }

    /// Connects to the head at `address` (`host:port`).
    pub async fn connect(address: &str, token: Option<&str>) -> Result<Runtime> {
        Self::open(address, token, None, None).await
    }

    pub(crate) async fn open(
        address: &str,
        token: Option<&str>,
        local: Option<LocalStore>,
        worker_name: Option<String>,
    ) -> Result<Runtime> {
        let channel = transport::connect(address).await?;
        let mut head = HeadClient::with_interceptor(channel, AddAuth::new(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let hello = pb::DriverHello {
            protocol_version: PROTOCOL_VERSION,
            job: std::env::var("FLOTILLA_JOB").unwrap_or_default(),
            worker_name: worker_name.unwrap_or_default(),
        };
        let _ = ops_tx.send(pb::DriverOp {
            op: Some(driver_op::Op::Hello(hello)),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let outbound = Batches::new(ops_rx)
            .map(|ops| pb::DriverBatch { ops })
            .take_until(stop_rx);
        let mut inbound = head
            .drive(outbound)
            .await
            .map_err(|s| connect_error(address, s))?
            .into_inner();
        let first = inbound
            .message()
            .await
            .map_err(|s| connect_error(address, s))?
            .and_then(|batch| batch.events.into_iter().next())
            .and_then(|e| e.event);
        let session = match first {
            Some(driver_event::Event::Session(info)) => SessionId(info.session),
            _ => return Err(Error::Rpc("the head did not open a session".into())),
        };
        let inner = Arc::new(ClientInner {
            session,
            seq: AtomicU64::new(0),
            ops_tx,
            objects: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
            head: head.clone(),
            head_address: address.to_string(),
            peers: Peers::new(token.map(str::to_string)),
            local,
            cluster: Mutex::new(None),
            stop_tx: Mutex::new(Some(stop_tx)),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        let Some(inner) = weak.upgrade() else { return };
                        for event in batch.events {
                            match event.event {
                                Some(driver_event::Event::Object(state)) => {
                                    inner.resolve_event(state)
                                }
                                Some(driver_event::Event::ActorFound(found)) => {
                                    let tx = inner
                                        .lookups
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .remove(&found.request);
                                    if let Some(tx) = tx {
                                        let _ = tx.send(found);
                                    }
                                }
                                Some(driver_event::Event::Session(_)) | None => {}
                            }
                        }
                    }
                    Ok(None) => break "the head closed the session".to_string(),
                    Err(status) => break format!("lost the head: {}", status.message()),
                }
            };
            if let Some(inner) = weak.upgrade() {
                inner.close(reason);
            }
        });
        Ok(Runtime {
            inner,
            binding: None,
        })
    }

    pub(crate) fn from_parts(inner: Arc<ClientInner>, binding: Option<TaskBinding>) -> Runtime {
        Runtime { inner, binding }
    }

    pub(crate) fn bound_to(&self, binding: TaskBinding) -> Runtime {
        Runtime {
            inner: self.inner.clone(),
            binding: Some(binding),
        }
    }

    /// The head's address.
    pub fn head_address(&self) -> &str {
        &self.inner.head_address
    }

    /// This session's number.
    pub fn session(&self) -> u32 {
        self.inner.session.0
    }

    fn mint(&self) -> ObjectId {
        ObjectId::new(
            self.inner.session,
            self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }

    fn new_ref<T>(&self, id: ObjectId, slot: Slot) -> ObjectRef<T> {
        self.inner
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, slot);
        ObjectRef::new(
            Arc::new(RefInner {
                id,
                owned: true,
                client: self.inner.clone(),
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
        self.inner
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Slot::Ready(State::Error(err)));
        self.borrowed_ref(id)
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
        };
        let r = self.new_ref(id, Slot::Pending(Vec::new()));
        self.inner.send(driver_op::Op::Submit(spec));
        // Argument references may be released only after the submission is queued.
        drop(args.keep);
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
            let mut objects = self.inner.objects.lock().unwrap_or_else(|e| e.into_inner());
            match objects.get_mut(&id) {
                Some(Slot::Ready(state)) => return Ok(state.clone()),
                Some(Slot::Pending(waiters)) => {
                    if self.inner.closed.load(Ordering::SeqCst) {
                        return Err(self.inner.shutdown_error());
                    }
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    rx
                }
                None => {
                    if self.inner.closed.load(Ordering::SeqCst) {
                        return Err(self.inner.shutdown_error());
                    }
                    let (tx, rx) = oneshot::channel();
                    objects.insert(id, Slot::Pending(vec![tx]));
                    self.inner.send(driver_op::Op::Subscribe(id.0));
                    rx
                }
            }
        };
        // A task waiting here lends its slots to other work until the value arrives.
        let lending = self
            .binding
            .as_ref()
            .map(|b| Lending::start(b, &self.inner));
        let result = rx.await.map_err(|_| self.inner.shutdown_error());
        if let Some(lending) = lending {
            lending.finish().await;
        }
        result
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
                        State::Error(e) => Err(Error::from_task_error(&e)),
                    }
                }
                other => other,
            },
            State::Error(e) => Err(Error::from_task_error(&e)),
        }
    }

    /// Drops what this session knows of a ready object and subscribes to its current state.
    fn forget_state(&self, id: ObjectId) {
        let mut objects = self.inner.objects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot @ Slot::Ready(_)) = objects.get_mut(&id) {
            *slot = Slot::Pending(Vec::new());
            self.inner.send(driver_op::Op::Subscribe(id.0));
        }
    }

    pub(crate) async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        if let Some(local) = &self.inner.local {
            if let Some(b) = local.store.get(id)? {
                return Ok(b);
            }
        }
        self.inner.peers.fetch(id, stored).await
    }

    /// Waits for the value of an object.
    pub async fn get<T: DeserializeOwned + 'static>(&self, r: &ObjectRef<T>) -> Result<T> {
        let bytes = self.value_bytes(r.id()).await?;
        codec::decode(&bytes)
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
                    inner: self.inner.clone(),
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
        let lending = self
            .binding
            .as_ref()
            .map(|b| Lending::start(b, &self.inner));
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

    /// Stores a value in the cluster and returns a reference to it. Small values travel inline;
    /// large ones go to a worker's store (this worker's, inside a task).
    pub async fn put<T: Serialize + 'static>(&self, value: &T) -> Result<ObjectRef<T>> {
        let bytes = codec::encode(value)?;
        self.put_bytes(bytes).await
    }

    pub(crate) async fn put_bytes<T>(&self, bytes: Bytes) -> Result<ObjectRef<T>> {
        let id = self.mint();
        if bytes.len() <= INLINE_MAX_BYTES {
            let r = self.new_ref(id, Slot::Ready(State::InlineValue(bytes.clone())));
            self.inner.send(driver_op::Op::Put(pb::PutObject {
                object: id.0,
                value: Some(put_object::Value::InlineValue(bytes)),
            }));
            return Ok(r);
        }
        let size = bytes.len() as u64;
        let location = match &self.inner.local {
            Some(local) => {
                local.store.put(id, bytes)?;
                pb::ObjectLocation {
                    worker: local.worker,
                    address: local.address.clone(),
                    node: local.node.clone(),
                    shm_path: String::new(),
                    http_address: local.http_address.clone(),
                }
            }
            None => {
                let target = self.pick_store().await?;
                let mut location = pb::ObjectLocation {
                    worker: target.id,
                    address: target.address,
                    node: target.node.clone(),
                    shm_path: String::new(),
                    http_address: target.http_address,
                };
                match self
                    .share_on_host(id, &target.node, &location.http_address, &bytes)
                    .await
                {
                    Some(segment) => location.shm_path = segment,
                    None => self.inner.peers.upload(id, &location, bytes).await?,
                }
                location
            }
        };
        let stored = pb::StoredObject {
            size,
            locations: vec![location],
        };
        let r = self.new_ref(id, Slot::Ready(State::Stored(stored.clone())));
        self.inner.send(driver_op::Op::Put(pb::PutObject {
            object: id.0,
            value: Some(put_object::Value::Stored(stored)),
        }));
        Ok(r)
    }

    /// On the worker's own host, writes the value once into shared memory and lets the worker
    /// map it: no upload, and gets on this host map it too. `None` when that is not possible.
    async fn share_on_host(
        &self,
        id: ObjectId,
        node: &str,
        http_address: &str,
        bytes: &[u8],
    ) -> Option<String> {
        if http_address.is_empty() || node != crate::worker::hostname() {
            return None;
        }
        let segment = crate::shm::write(id, bytes).ok()?;
        match self.inner.peers.adopt(id, http_address, &segment).await {
            Ok(()) => Some(segment.to_string_lossy().into_owned()),
            Err(e) => {
                tracing::debug!("shared-memory put of {id} fell back to an upload: {e}");
                let _ = std::fs::remove_file(&segment);
                None
            }
        }
    }

    async fn pick_store(&self) -> Result<pb::WorkerStatus> {
        let status = self.status().await?;
        status
            .workers
            .into_iter()
            .filter(|w| {
                !matches!(
                    w.state(),
                    pb::WorkerState::Draining | pb::WorkerState::Drained
                )
            })
            .min_by_key(|w| (w.memory_bytes, w.id))
            .ok_or_else(|| Error::Rpc("no worker is available to store a large object".into()))
    }

    /// Cancels the task behind a reference: queued tasks never run, running ones are told to stop
    /// (an `async fn` stops at its next await; a plain function runs on but its result is dropped).
    pub fn cancel<T>(&self, r: &ObjectRef<T>) {
        self.inner.send(driver_op::Op::Cancel(r.id().0));
    }

    /// The cluster's status: workers, slots, queue, objects.
    pub async fn status(&self) -> Result<pb::StatusReply> {
        let mut head = self.inner.head.clone();
        Ok(head.status(pb::StatusRequest {}).await?.into_inner())
    }

    pub(crate) async fn lookup_actor_id(&self, name: &str) -> Result<pb::ActorFound> {
        let request = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut lookups = self.inner.lookups.lock().unwrap_or_else(|e| e.into_inner());
            // `close` clears lookups after setting `closed`: check under the same lock.
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(self.inner.shutdown_error());
            }
            lookups.insert(request, tx);
        }
        self.inner.send(driver_op::Op::LookupActor(pb::LookupActor {
            request,
            name: name.to_string(),
        }));
        rx.await.map_err(|_| self.inner.shutdown_error())
    }

    pub(crate) fn borrowed_ref<T>(&self, id: ObjectId) -> ObjectRef<T> {
        ObjectRef::new(
            Arc::new(RefInner {
                id,
                owned: false,
                client: self.inner.clone(),
            }),
            self.binding.clone(),
        )
    }

    /// Ends the session (the head cancels what is left of its work and frees its objects) and
    /// stops the local cluster, if this runtime started one.
    pub async fn shutdown(&self) {
        if let Some(stop) = self
            .inner
            .stop_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        self.inner.close("the runtime was shut down".into());
        let cluster = self
            .inner
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
    }
}

fn connect_error(address: &str, s: tonic::Status) -> Error {
    Error::Connect {
        address: address.to_string(),
        message: format!("{}: {}", s.code().description(), s.message()),
    }
}
