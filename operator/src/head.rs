//! The operator's client of a cluster head: which workers it has and in what state, draining
//! one before its pod is deleted, and a job's task counts and cancelling its work.
//!
//! The operator dials the head pod's IP rather than the head Service's DNS name: it always can
//! (pod IPs are routable from the operator's pod), it needs no cluster DNS, and a reconcile never
//! talks to a head pod that is already being replaced.

use std::{collections::HashMap, time::Duration};

use flotilla_proto::{
    auth::AddAuth,
    v1::{
        head_client::HeadClient, CancelJobReply, CancelJobRequest, DrainOutcome, DrainRequest,
        JobStatus, StatusRequest, UndrainReply, UndrainRequest, WorkerState,
    },
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
    Request, Status,
};

use crate::contract::HEAD_GRPC_PORT;

/// How long to wait for a head to accept a connection or answer a status request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// What the head says about one of its workers (by pod name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadView {
    /// Registered, running no task.
    Idle,
    /// Registered, running tasks.
    Busy,
    /// Being drained.
    Draining,
}

impl From<WorkerState> for HeadView {
    /// A drained worker is still draining for the operator until its pod is gone; a state this
    /// operator does not know counts as busy, so it is never picked first for scale-down.
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Idle => Self::Idle,
            WorkerState::Draining | WorkerState::Drained => Self::Draining,
            WorkerState::Busy | WorkerState::Unspecified => Self::Busy,
        }
    }
}

/// Why the head could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head's address or the token is not usable.
    #[error("cannot address the head at {address}: {message}")]
    Address {
        /// The address dialled.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// The connection failed.
    #[error("cannot reach the head at {address}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The head answered with an error.
    // tonic's display of a Status is a dump of its code, details and metadata.
    #[error("the head refused: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
}

type Client = HeadClient<InterceptedService<Channel, AddAuth>>;

/// A connection to one head.
pub struct Head {
    client: Client,
}

impl Head {
    /// Connects to the head at `pod_ip` with the cluster's `token`.
    pub async fn connect(pod_ip: &str, token: &str) -> Result<Self, HeadError> {
        // Through SocketAddr, so an IPv6 pod IP gets its brackets.
        let address = match pod_ip.parse::<std::net::IpAddr>() {
            Ok(ip) => format!(
                "http://{}",
                std::net::SocketAddr::new(ip, HEAD_GRPC_PORT as u16)
            ),
            Err(_) => format!("http://{pod_ip}:{HEAD_GRPC_PORT}"),
        };
        let bad_address = |message: String| HeadError::Address {
            address: address.clone(),
            message,
        };
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| bad_address(e.to_string()))?
            .connect_timeout(HEAD_TIMEOUT);
        // `AddAuth` leaves out a token that cannot travel as metadata, and the head would only
        // answer "unauthenticated": say what is wrong here instead.
        if MetadataValue::<Ascii>::try_from(token).is_err() {
            return Err(bad_address("the token is not valid metadata".into()));
        }
        let credentials = AddAuth::new(Some(token));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| HeadError::Connect { address, source })?;
        Ok(Head {
            client: HeadClient::with_interceptor(channel, credentials),
        })
    }

    /// The head's workers by name, and what each is doing.
    pub async fn workers(&mut self) -> Result<HashMap<String, HeadView>, HeadError> {
        let mut request = Request::new(StatusRequest {});
        request.set_timeout(HEAD_TIMEOUT);
        let reply = self.client.status(request).await?.into_inner();
        Ok(reply
            .workers
            .into_iter()
            .map(|w| {
                let view = HeadView::from(w.state());
                (w.name, view)
            })
            .collect())
    }

    /// Takes back a worker being drained (or drained): it takes work again and its drain ends as
    /// cancelled.
    pub async fn undrain(&mut self, worker: &str) -> Result<UndrainReply, HeadError> {
        let mut request = Request::new(UndrainRequest {
            worker: worker.to_owned(),
        });
        request.set_timeout(HEAD_TIMEOUT);
        Ok(self.client.undrain(request).await?.into_inner())
    }

    /// The task counts of job `job`, if the head knows it.
    pub async fn job(&mut self, job: &str) -> Result<Option<JobStatus>, HeadError> {
        let mut request = Request::new(StatusRequest {});
        request.set_timeout(HEAD_TIMEOUT);
        let reply = self.client.status(request).await?.into_inner();
        Ok(reply.jobs.into_iter().find(|j| j.job == job))
    }

    /// Cancels the tasks and actors of job `job`; its drivers may submit nothing more.
    pub async fn cancel_job(&mut self, job: &str) -> Result<CancelJobReply, HeadError> {
        let mut request = Request::new(CancelJobRequest {
            job: job.to_owned(),
        });
        request.set_timeout(HEAD_TIMEOUT);
        Ok(self.client.cancel_job(request).await?.into_inner())
    }

    /// Drains `worker`: its objects move elsewhere and its running tasks finish, or move
    /// elsewhere after `timeout`. Returns how the drain ended, and the head's message.
    pub async fn drain(
        &mut self,
        worker: &str,
        timeout: Duration,
    ) -> Result<(DrainOutcome, String), HeadError> {
        let mut request = Request::new(DrainRequest {
            worker: worker.to_owned(),
            timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1),
        });
        // The head answers at its own deadline; allow for the copy of the last objects.
        request.set_timeout(timeout + HEAD_TIMEOUT * 10);
        let reply = self.client.drain(request).await?.into_inner();
        Ok((reply.outcome(), reply.message))
    }
}
