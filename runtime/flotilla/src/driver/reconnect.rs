//! A driver's connection to the head, and how it comes back after the head restarts.
//!
//! A session outlives its connection. When the head's stream breaks (the head was killed, its pod
//! rescheduled, or the network failed), a driver keeps trying the same address for
//! [`RECONNECT_WINDOW`] and asks the head to resume its session under the same id, since the ids
//! of its objects carry it. Then it brings the head up to date from what it knows, not from the
//! messages that were lost on the way: the stored objects it still references (the workers report
//! where they are), its small values (put again), the tasks whose results it had not learned
//! (submitted again, in the order they were first submitted, so arguments come before the tasks
//! that take them) and what it waits for (subscribed again). Actors do not survive: calls still
//! waiting on one fail with an error that says so.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use flotilla_core::ObjectId;
use flotilla_proto::{
    v1::{self as pb, driver_event, driver_op, put_object},
    PROTOCOL_VERSION,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;

use super::{ObjectCell, Session, State};
use crate::{
    error::{Error, ErrorKind},
    net::{self, batch::poll_batch, HeadRpc},
};

/// How long a driver that lost the head keeps trying to reach it again.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(60);
/// How long one attempt may take: a head that accepts connections but does not answer (stopped)
/// must not use up the whole window in one try.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most ops sent again in one batch (each at most an inline value of 64 KiB).
const RESYNC_BATCH: usize = 256;

/// A task whose result this session has not learned yet, kept to submit again to a head that
/// restarted.
pub(super) struct Unfinished {
    /// A function task's spec; `None` for actor creations and calls, which are not submitted
    /// again (the actor is gone with the head).
    pub(super) spec: Option<pb::TaskSpec>,
    /// Every reference to its result was dropped: after submitting it again, release it again.
    pub(super) released: bool,
}

/// The session's queue of ops for the head, and which connection may take from it: a connection
/// that was replaced stops taking even if something still polls its stream.
pub(super) struct OpsQueue {
    pub(super) rx: mpsc::UnboundedReceiver<pb::DriverOp>,
    pub(super) generation: u64,
}

/// The outbound half of one connection: the session's ops, batched, while it is the current one.
struct Outbound {
    queue: Arc<Mutex<OpsQueue>>,
    generation: u64,
}

impl Stream for Outbound {
    type Item = pb::DriverBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::DriverBatch>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.generation != self.generation {
            return Poll::Ready(None);
        }
        poll_batch(&mut queue.rx, cx).map(|b| b.map(|ops| pb::DriverBatch { ops }))
    }
}

/// An open connection: the client (for status calls), the head's events, what the head said.
pub(super) struct Connection {
    pub(super) head: HeadRpc,
    pub(super) inbound: Streaming<pb::DriverEvents>,
    pub(super) info: pb::SessionInfo,
    /// Ends the outbound stream when sent or dropped.
    pub(super) stop_tx: oneshot::Sender<()>,
}

fn op(op: driver_op::Op) -> pb::DriverOp {
    pb::DriverOp {
        op: Some(op),
        parent: 0,
        lost_on: String::new(),
    }
}

/// A failed attempt to open a session: the error, and the head's status code if it answered.
pub(super) struct Failed {
    pub(super) error: Error,
    code: Option<tonic::Code>,
}

impl Failed {
    /// Whether another attempt would fail the same way (a wrong token, another protocol).
    fn for_good(&self) -> bool {
        matches!(
            self.code,
            Some(tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition)
        )
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed { error, code: None }
    }
}

/// Opens a session on the head at `address`: `hello` first, then `resync` (ops that must reach
/// the head before anything queued), then the queue's ops from `generation` on.
pub(super) async fn connect(
    address: &str,
    token: Option<&str>,
    hello: pb::DriverHello,
    resync: Vec<pb::DriverOp>,
    queue: Arc<Mutex<OpsQueue>>,
    generation: u64,
) -> std::result::Result<Connection, Failed> {
    let mut head = net::connect_head(address, token).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut first = vec![pb::DriverBatch {
        ops: vec![op(driver_op::Op::Hello(hello))],
    }];
    let mut resync = resync.into_iter().peekable();
    while resync.peek().is_some() {
        first.push(pb::DriverBatch {
            ops: resync.by_ref().take(RESYNC_BATCH).collect(),
        });
    }
    let outbound = futures::stream::iter(first)
        .chain(Outbound { queue, generation })
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
    match first {
        Some(driver_event::Event::Session(info)) => Ok(Connection {
            head,
            inbound,
            info,
            stop_tx,
        }),
        _ => Err(Failed::from(Error::Connect {
            address: address.to_string(),
            message: "the head did not open a session".into(),
        })),
    }
}

fn connect_error(address: &str, s: tonic::Status) -> Failed {
    Failed {
        error: Error::Connect {
            address: address.to_string(),
            message: format!("{}: {}", s.code().description(), s.message()),
        },
        code: Some(s.code()),
    }
}

impl Session {
    /// Tries to resume this session on the head at the same address until [`RECONNECT_WINDOW`]
    /// has passed; `lost` says how the previous connection ended.
    async fn reconnect(
        self: &Arc<Self>,
        lost: &str,
    ) -> std::result::Result<Streaming<pb::DriverEvents>, String> {
        let address = &self.head_address;
        tracing::warn!(
            head = %address,
            session = self.id.0,
            "{lost}; waiting up to {RECONNECT_WINDOW:?} for the head at {address} to come back"
        );
        let deadline = Instant::now() + RECONNECT_WINDOW;
        let mut backoff = Duration::from_millis(50);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last =
                match tokio::time::timeout(ATTEMPT_TIMEOUT.min(remaining), self.resume()).await {
                    Ok(Ok(inbound)) => return Ok(inbound),
                    Ok(Err(e)) if e.for_good() => {
                        return Err(format!(
                            "{lost}; the head at {address} refused it again: {}",
                            e.error
                        ))
                    }
                    Ok(Err(e)) => e.error.to_string(),
                    Err(_) => format!("the head did not answer within {ATTEMPT_TIMEOUT:?}"),
                };
            if self.closed.load(Ordering::SeqCst) {
                return Err("the runtime was shut down".into());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(format!(
                    "{lost}; the head at {address} did not come back within {RECONNECT_WINDOW:?} \
                     (last attempt: {last})"
                ));
            }
            tracing::debug!(head = %address, "reconnect attempt failed: {last}");
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One attempt to resume: brings the head up to date and switches to the new connection.
    async fn resume(self: &Arc<Self>) -> std::result::Result<Streaming<pb::DriverEvents>, Failed> {
        let (hello, resync, generation) = self.resync();
        let conn = connect(
            &self.head_address,
            self.token.as_deref(),
            hello,
            resync,
            self.queue.clone(),
            generation,
        )
        .await?;
        if conn.info.session != self.id.0 {
            return Err(Failed::from(Error::Connect {
                address: self.head_address.clone(),
                message: format!(
                    "the head gave session {} instead of resuming session {}",
                    conn.info.session, self.id.0
                ),
            }));
        }
        let previous = std::mem::replace(
            &mut *self.head_instance.lock().unwrap_or_else(|e| e.into_inner()),
            conn.info.head_instance.clone(),
        );
        if previous == conn.info.head_instance {
            tracing::info!(head = %self.head_address, session = self.id.0, "reconnected to the same head");
        } else {
            tracing::info!(
                head = %self.head_address,
                session = self.id.0,
                "reconnected to a restarted head; submitted again what had not finished"
            );
        }
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = conn.head;
        *self.stop_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.stop_tx);
        Ok(conn.inbound)
    }

    /// What a head that may have forgotten this session needs, taken from what the session
    /// knows now: the hello that resumes it, the ops that bring the head up to date, and the
    /// generation of the queue from which the new connection takes ops (everything queued before
    /// is covered by the resync, so it is dropped).
    fn resync(&self) -> (pb::DriverHello, Vec<pb::DriverOp>, u64) {
        // Taken in the order `submit` takes them, so no submission is half recorded.
        let mut unfinished = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        let generation = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            while queue.rx.try_recv().is_ok() {}
            queue.generation += 1;
            queue.generation
        };
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let own = |id: &ObjectId| id.session() == self.id;
        let mut holds = Vec::new();
        let mut puts = Vec::new();
        let mut subscribes = Vec::new();
        for (id, cell) in objects.iter() {
            match cell {
                ObjectCell::Ready(State::InlineValue(b)) if own(id) => {
                    puts.push(op(driver_op::Op::Put(pb::PutObject {
                        object: id.0,
                        value: Some(put_object::Value::InlineValue(b.clone())),
                    })))
                }
                ObjectCell::Ready(State::Stored(_)) if own(id) => holds.push(id.0),
                ObjectCell::Pending(_) if !unfinished.contains_key(id) => {
                    if own(id) {
                        holds.push(id.0);
                    }
                    subscribes.push(op(driver_op::Op::Subscribe(id.0)));
                }
                _ => {}
            }
        }
        let mut ops = puts;
        let mut lost_actor_work = Vec::new();
        // A result that arrived while this resync was being taken: known, not submitted again.
        unfinished.retain(|id, _| !matches!(objects.get(id), Some(ObjectCell::Ready(_))));
        for (id, task) in unfinished.iter() {
            if let Some(spec) = &task.spec {
                ops.push(op(driver_op::Op::Submit(spec.clone())));
                if task.released {
                    ops.push(op(driver_op::Op::Subscribe(id.0)));
                    ops.push(op(driver_op::Op::Release(id.0)));
                }
            } else {
                lost_actor_work.push(*id);
            }
        }
        ops.extend(subscribes);
        for id in lost_actor_work {
            unfinished.remove(&id);
            self.head_call_ended(id);
            let err = pb::TaskError {
                kind: ErrorKind::ActorDied.to_proto() as i32,
                task: String::new(),
                message: format!(
                    "the head at {} restarted before this actor task finished; actors do not \
                     survive a restart of the head",
                    self.head_address
                ),
            };
            if let Some(cell) = objects.get_mut(&id) {
                if let ObjectCell::Pending(waiters) =
                    std::mem::replace(cell, ObjectCell::Ready(State::Error(err.clone())))
                {
                    for w in waiters {
                        let _ = w.send(State::Error(err.clone()));
                    }
                }
            }
        }
        drop(objects);
        drop(unfinished);
        // The head that answers now holds none of this session's leases.
        self.forget_leases();
        // Lookups in flight were lost with the connection.
        let lookups: Vec<_> = self
            .lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (request, tx) in lookups {
            let _ = tx.send(pb::ActorFound {
                request,
                actor: 0,
                class: String::new(),
                location: None,
                error: format!(
                    "the head at {} restarted during the lookup; actors do not survive a \
                     restart of the head",
                    self.head_address
                ),
            });
        }
        let hello = pb::DriverHello {
            protocol_version: PROTOCOL_VERSION,
            job: self.job.clone(),
            worker_name: String::new(),
            resume_session: self.id.0,
            holds,
        };
        (hello, ops, generation)
    }
}

/// Receives the head's events for `session` until the connection ends; resumes the session
/// on the head when it can, and closes it when it cannot.
pub(super) fn spawn_events(session: &Arc<Session>, inbound: Streaming<pb::DriverEvents>) {
    let weak = Arc::downgrade(session);
    let head_address = session.head_address.clone();
    let reconnects = session.host.is_none();
    tokio::spawn(async move {
        let mut inbound = inbound;
        loop {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        let Some(session) = weak.upgrade() else {
                            return;
                        };
                        for event in batch.events {
                            match event.event {
                                Some(driver_event::Event::Object(state)) => {
                                    session.resolve_event(state)
                                }
                                Some(driver_event::Event::ActorFound(found)) => {
                                    session.found_actor(found)
                                }
                                Some(driver_event::Event::Lease(grant)) => {
                                    session.lease_granted(grant)
                                }
                                Some(driver_event::Event::LeaseRevoked(lease)) => {
                                    session.lease_revoked(lease)
                                }
                                Some(driver_event::Event::Session(_)) | None => {}
                            }
                        }
                    }
                    Ok(None) => break format!("the head at {head_address} closed the session"),
                    Err(status) => {
                        break format!(
                            "lost the head at {head_address}: it did not answer within {:?}, or \
                             the connection broke ({}: {})",
                            net::KEEP_ALIVE_INTERVAL + net::KEEP_ALIVE_TIMEOUT,
                            status.code().description(),
                            status.message()
                        )
                    }
                }
            };
            let Some(session) = weak.upgrade() else {
                return;
            };
            if !reconnects || session.closed.load(Ordering::SeqCst) {
                session.close(reason);
                return;
            }
            match session.reconnect(&reason).await {
                Ok(next) => inbound = next,
                Err(why) => {
                    tracing::error!(session = session.id.0, "{why}");
                    session.close(why);
                    return;
                }
            }
        }
    });
}
