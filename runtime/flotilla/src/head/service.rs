//! The `flotilla.v1.Head` gRPC service: thin adapters that turn drivers' and workers' streams into
//! events for the core loop, and answer status and drain requests.

use std::{pin::Pin, time::Duration};

use flotilla_core::{ObjectId, SessionId, Snapshot, WorkerInfo, WorkerView};
use flotilla_proto::{
    v1::{self as pb, driver_op, head_server::Head, worker_op},
    PROTOCOL_VERSION,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::core::HeadEvent;
use crate::net::Batches;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service; every handler talks to the core loop through `events_tx`.
pub(crate) struct HeadService {
    pub(crate) events_tx: mpsc::UnboundedSender<HeadEvent>,
    /// The head process's random id.
    pub(crate) instance: String,
}

impl HeadService {
    fn send(&self, event: HeadEvent) -> Result<(), Status> {
        self.events_tx
            .send(event)
            .map_err(|_| Status::unavailable("the head is shutting down"))
    }
}

/// Feeds a session's inbound batches to the core as events, then `gone` when the stream ends
/// (closed by the peer, or broken, as when its process is killed).
fn forward<B: Send + 'static>(
    mut inbound: Streaming<B>,
    events_tx: mpsc::UnboundedSender<HeadEvent>,
    event: impl Fn(B) -> HeadEvent + Send + 'static,
    gone: HeadEvent,
) {
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(batch)) => {
                    if events_tx.send(event(batch)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!("session stream ended: {}", status.message());
                    break;
                }
            }
        }
        let _ = events_tx.send(gone);
    });
}

fn check_version(version: u32, who: &str) -> Result<(), Status> {
    if version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version mismatch: the head speaks flotilla protocol {PROTOCOL_VERSION}, this {who} speaks {version}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Head for HeadService {
    type DriveStream = BoxStream<pb::DriverEvents>;
    type WorkStream = BoxStream<pb::WorkerCommands>;

    async fn drive(
        &self,
        request: Request<Streaming<pb::DriverBatch>>,
    ) -> Result<Response<Self::DriveStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty driver stream"))?;
        let mut ops = first.ops.into_iter();
        let hello = match ops.next().and_then(|o| o.op) {
            Some(driver_op::Op::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a driver session must begin with a hello",
                ))
            }
        };
        check_version(hello.protocol_version, "driver")?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let worker = (!hello.worker_name.is_empty()).then_some(hello.worker_name);
        let resume = (hello.resume_session != 0).then(|| {
            (
                SessionId(hello.resume_session),
                hello.holds.into_iter().map(ObjectId).collect(),
            )
        });
        let job = (!hello.job.is_empty()).then_some(hello.job);
        self.send(HeadEvent::OpenSession {
            worker,
            resume,
            job,
            events_tx,
            reply,
        })?;
        let session = reply_rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?
            .map_err(Status::already_exists)?;
        let rest: Vec<pb::DriverOp> = ops.collect();
        if !rest.is_empty() {
            self.send(HeadEvent::DriverOps(session, rest))?;
        }
        forward(
            inbound,
            self.events_tx.clone(),
            move |batch: pb::DriverBatch| HeadEvent::DriverOps(session, batch.ops),
            HeadEvent::SessionGone(session),
        );
        let stream = Batches::new(events_rx).map(|events| Ok(pb::DriverEvents { events }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerBatch>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty worker stream"))?;
        let mut ops = first.ops.into_iter();
        let register = match ops.next().and_then(|o| o.op) {
            Some(worker_op::Op::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "a worker session must begin with a registration",
                ))
            }
        };
        check_version(register.protocol_version, "worker")?;
        let info = WorkerInfo {
            name: register.name,
            address: register.address,
            http_address: register.http_address,
            node: register.node,
            slots: register.slots,
            custom: register.custom_resources,
            functions: register
                .functions
                .into_iter()
                .map(|f| (f.name, f.signature))
                .collect(),
            classes: register
                .actor_classes
                .into_iter()
                .map(|f| (f.name, f.signature))
                .collect(),
            program: register.program,
            build_id: register.build_id,
            group: register.group,
        };
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        self.send(HeadEvent::RegisterWorker {
            info: Box::new(info),
            commands_tx,
            reply,
        })?;
        let worker = reply_rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?
            .map_err(Status::already_exists)?;
        tracing::debug!(?remote, id = %worker, "worker stream open");
        let rest: Vec<pb::WorkerOp> = ops.collect();
        if !rest.is_empty() {
            self.send(HeadEvent::WorkerOps(worker, rest))?;
        }
        forward(
            inbound,
            self.events_tx.clone(),
            move |batch: pb::WorkerBatch| HeadEvent::WorkerOps(worker, batch.ops),
            HeadEvent::WorkerGone(worker),
        );
        let stream = Batches::new(commands_rx).map(|commands| Ok(pb::WorkerCommands { commands }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::Status(reply))?;
        let (snap, workers) = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        Ok(Response::new(status_reply(&self.instance, &snap, &workers)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let req = request.into_inner();
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("name the worker to drain"));
        }
        let timeout = Duration::from_secs(u64::from(if req.timeout_seconds == 0 {
            60
        } else {
            req.timeout_seconds
        }));
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::Drain {
            worker: req.worker,
            timeout,
            reply,
        })?;
        let answer = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        Ok(Response::new(answer))
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainReply>, Status> {
        let worker = request.into_inner().worker;
        if worker.is_empty() {
            return Err(Status::invalid_argument("name the worker to take back"));
        }
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::Undrain { worker, reply })?;
        let answer = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        answer
            .map(Response::new)
            .map_err(|e| Status::not_found(e.0))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobReply>, Status> {
        let job = request.into_inner().job;
        if job.is_empty() {
            return Err(Status::invalid_argument("name the job to cancel"));
        }
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::CancelJob { job, reply })?;
        let answer = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        Ok(Response::new(answer))
    }
}

/// The wire form of a status view.
pub fn status_reply(instance: &str, snap: &Snapshot, workers: &[WorkerView]) -> pb::StatusReply {
    pb::StatusReply {
        head_instance: instance.to_string(),
        workers: workers
            .iter()
            .map(|w| pb::WorkerStatus {
                id: w.id.0,
                name: w.name.clone(),
                address: w.address.clone(),
                state: w.state as i32,
                slots: w.slots,
                busy_slots: w.busy_slots,
                objects: w.store.objects,
                memory_bytes: w.store.memory_bytes,
                spilled_bytes: w.store.spilled_bytes,
                program: w.program.clone(),
                group: w.group.clone(),
                http_address: w.http_address.clone(),
                node: w.node.clone(),
            })
            .collect(),
        tasks_pending: snap.tasks_pending,
        tasks_waiting: snap.tasks_waiting,
        tasks_running: snap.tasks_running,
        tasks_finished: snap.tasks_finished,
        tasks_failed: snap.tasks_failed,
        objects: snap.objects,
        actors_alive: snap.actors_alive,
        drivers: snap.sessions as u32,
        desired_workers: snap.desired_workers,
        tasks_retried: snap.tasks_retried,
        jobs: snap
            .jobs
            .iter()
            .map(|j| pb::JobStatus {
                job: j.job.clone(),
                tasks_submitted: j.tasks_submitted,
                tasks_finished: j.tasks_finished,
                tasks_failed: j.tasks_failed,
                tasks_live: j.tasks_live,
                drivers: u32::try_from(j.drivers).unwrap_or(u32::MAX),
            })
            .collect(),
    }
}
