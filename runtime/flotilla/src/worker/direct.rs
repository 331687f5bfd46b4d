//! The `flotilla.v1.Worker` service: actor calls straight from drivers that know where the actor
//! lives, and plain tasks from drivers that leased a slot here from the head, so an awaited call
//! or task crosses two hops instead of four. Each call goes to its hosted actor exactly as a call
//! the head dispatched does (same order, same inline fast path), and each leased task runs as a
//! dispatched task does (the worker's slots, the same executor); the outcome goes back on the
//! caller's stream, and the caller tells the head. A call for an actor (or a life of it) that is
//! not here, or a task on a lease whose job was cancelled, is answered as not hosted and does not
//! run: the caller sends it through the head instead. The service sits on the worker's one port,
//! behind the cluster token.

use std::{pin::Pin, sync::Arc};

use tokio::task::AbortHandle;

use flotilla_core::ObjectId;
use flotilla_proto::{
    auth::CheckAuth,
    v1::{self as pb, direct_reply, task_spec, worker_op, worker_server},
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::{
    codegen::InterceptedService, server::NamedService, Request, Response, Status, Streaming,
};
use tower::ServiceExt;

use super::{actors, executor, session, Shared};
use crate::{net::MAX_MESSAGE_BYTES, registry::registry};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The routes of the service, for the worker's router; every call carries the cluster token.
pub(super) fn router(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> axum::Router {
    let token = shared.config.token.clone();
    let server = worker_server::WorkerServer::new(DirectService { shared, stop })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let path = format!(
        "/{}/{{*rest}}",
        <worker_server::WorkerServer<DirectService> as NamedService>::NAME
    );
    let service = InterceptedService::new(server, CheckAuth::new(token))
        .map_request(|r: axum::extract::Request| r.map(tonic::body::Body::new));
    axum::Router::new().route_service(&path, service)
}

/// A leased task while it runs: how to stop it (its lease's job cancelled) and where its outcome
/// goes.
pub(super) struct LeasedRun {
    pub(super) lease: u64,
    pub(super) handle: AbortHandle,
    pub(super) stop: Arc<executor::Stop>,
    pub(super) reply: mpsc::UnboundedSender<pb::WorkerOp>,
}

struct DirectService {
    shared: Arc<Shared>,
    /// Changes when the worker stops: streams end, so their connections can close.
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl worker_server::Worker for DirectService {
    type CallStream = BoxStream<pb::DirectReplies>;

    async fn call(
        &self,
        request: Request<Streaming<pb::DirectCalls>>,
    ) -> Result<Response<Self::CallStream>, Status> {
        let mut inbound = request.into_inner();
        // Outcomes come as the reports a worker sends the head; calls not run as replies.
        let (results_tx, results_rx) = mpsc::unbounded_channel::<pb::WorkerOp>();
        let (replies_tx, replies_rx) = mpsc::unbounded_channel::<pb::DirectReply>();
        let shared = self.shared.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let caller_gone = loop {
                let batch = tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(batch)) => batch,
                        _ => break true,
                    },
                    _ = stop.changed() => break false,
                };
                for call in batch.calls {
                    if let Some(bounced) = deliver(&shared, call, &results_tx) {
                        let _ = replies_tx.send(bounced);
                    }
                }
            };
            if caller_gone {
                // Nobody waits for the leased tasks of a driver that went away: they stop, as
                // the head stops the tasks of a session that ended.
                session::stop_leased(&shared, |r| r.reply.same_channel(&results_tx));
            }
        });
        let results = tokio_stream::wrappers::UnboundedReceiverStream::new(results_rx).filter_map(
            |op| async move {
                match op.op {
                    Some(worker_op::Op::Result(r)) => Some(pb::DirectReply {
                        task: r.task,
                        outcome: Some(direct_reply::Outcome::Result(r)),
                    }),
                    _ => None,
                }
            },
        );
        let bounced = tokio_stream::wrappers::UnboundedReceiverStream::new(replies_rx);
        let outbound = futures::stream::select(results, bounced)
            .ready_chunks(256)
            .map(|replies| Ok(pb::DirectReplies { replies }));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Hands a call to its actor; the reply saying it was not run when the actor (of the life the
/// caller means) is not hosted here.
fn deliver(
    shared: &Arc<Shared>,
    call: pb::DirectCall,
    results_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
) -> Option<pb::DirectReply> {
    let lease = call.lease;
    let spec = call.spec.unwrap_or_default();
    let task = spec.task;
    let not_hosted = |why: String| {
        Some(pb::DirectReply {
            task,
            outcome: Some(direct_reply::Outcome::NotHosted(why)),
        })
    };
    let inline = spec.nested.is_empty()
        && spec
            .args
            .iter()
            .all(|a| matches!(a.kind, Some(pb::arg::Kind::Value(_))));
    if !inline {
        return not_hosted("a direct call carries its arguments inline".into());
    }
    if lease != 0 && matches!(spec.kind, Some(task_spec::Kind::Function(_))) {
        return run_leased(shared, lease, spec, results_tx)
            .err()
            .map(|why| pb::DirectReply {
                task,
                outcome: Some(direct_reply::Outcome::NotHosted(why)),
            });
    }
    let Some(task_spec::Kind::ActorCall(actor_call)) = spec.kind else {
        return not_hosted(
            "only actor calls, and plain tasks on a lease, are taken directly".into(),
        );
    };
    let actor = ObjectId(actor_call.actor);
    let hosting = shared.hosting();
    let Some((rt, ops_tx)) = hosting.session.as_ref() else {
        return not_hosted(format!(
            "worker {} is not registered with a head",
            shared.config.name
        ));
    };
    let Some(hosted) = hosting
        .actors
        .get(&actor)
        .filter(|h| h.incarnation == call.incarnation)
    else {
        return not_hosted(format!(
            "actor {actor} (life {}) is not on worker {}",
            call.incarnation, shared.config.name
        ));
    };
    let args = inline_args(spec.args);
    let call = actors::Call {
        task: ObjectId(task),
        attempt: 0,
        method: actor_call.method,
        signature: spec.signature,
        args,
        route: executor::ResultRoute::BySize,
        reply: Some(results_tx.clone()),
    };
    if hosted.deliver(call, shared, rt, ops_tx) {
        None
    } else {
        not_hosted(format!("actor {actor} has stopped"))
    }
}

/// Runs a plain task on a slot its driver leased, as a dispatched task runs (the worker's slots,
/// the same executor); its outcome goes to `results_tx`. Refused when the lease's job was
/// cancelled or the worker has no session with a head.
fn run_leased(
    shared: &Arc<Shared>,
    lease: u64,
    spec: pb::TaskSpec,
    results_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
) -> Result<(), String> {
    let task = ObjectId(spec.task);
    if let Some(task_spec::Kind::Function(name)) = &spec.kind {
        if registry()
            .functions
            .get(name.as_str())
            .is_some_and(|f| f.takes_runtime)
        {
            // What it submits must count for its job and be cancelled with it, which the head
            // knows only of the tasks it dispatched.
            return Err(format!(
                "{name} submits tasks of its own; it runs through the head"
            ));
        }
    }
    // Held while the run starts and is recorded, so that its end (which forgets it) comes after.
    let mut hosting = shared.hosting();
    if hosting.cancelled_leases.contains(&lease) {
        return Err(format!("lease {lease} was cancelled with its job"));
    }
    let Some((rt, _)) = hosting.session.as_ref() else {
        return Err(format!(
            "worker {} is not registered with a head",
            shared.config.name
        ));
    };
    let mut spec = spec;
    let args = inline_args(std::mem::take(&mut spec.args));
    let dispatch = pb::Dispatch {
        spec: Some(spec),
        attempt: 0,
        args,
        restarts: 0,
        keep_result: false,
    };
    let stop = Arc::new(executor::Stop::default());
    let ended = Arc::downgrade(shared);
    let handle = tokio::spawn(executor::run_task(
        shared.clone(),
        rt.clone(),
        dispatch,
        results_tx.clone(),
        move |task| {
            if let Some(shared) = ended.upgrade() {
                shared.hosting().leased.remove(&task);
            }
        },
        stop.clone(),
    ));
    hosting.leased.insert(
        task,
        LeasedRun {
            lease,
            handle: handle.abort_handle(),
            stop,
            reply: results_tx.clone(),
        },
    );
    Ok(())
}

/// The arguments of a direct call or leased task, all inline values, as a dispatch carries them.
fn inline_args(args: Vec<pb::Arg>) -> Vec<pb::ResolvedArg> {
    args.into_iter()
        .map(|a| pb::ResolvedArg {
            kind: match a.kind {
                Some(pb::arg::Kind::Value(b)) => Some(pb::resolved_arg::Kind::Value(b)),
                _ => None,
            },
        })
        .collect()
}
