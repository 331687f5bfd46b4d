//! Admin calls to a head, for the command line, local clusters and tests: its status, draining a
//! worker or taking it back, and waiting until workers have registered.

use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;

use crate::{
    error::{Error, Result},
    net,
};

/// The head's status over gRPC.
pub async fn status(address: &str, token: Option<&str>) -> Result<pb::StatusReply> {
    let mut head = net::connect_head(address, token).await?;
    Ok(head.status(pb::StatusRequest {}).await?.into_inner())
}

/// Cancels a job's work at the head: its drivers' tasks and actors.
pub async fn cancel_job(
    address: &str,
    token: Option<&str>,
    job: &str,
) -> Result<pb::CancelJobReply> {
    let mut head = net::connect_head(address, token).await?;
    let request = pb::CancelJobRequest {
        job: job.to_string(),
    };
    Ok(head.cancel_job(request).await?.into_inner())
}

/// Asks the head to drain a worker; answers when it is drained (or the deadline passed).
pub async fn drain(
    address: &str,
    token: Option<&str>,
    worker: &str,
    timeout: Duration,
) -> Result<pb::DrainReply> {
    let mut head = net::connect_head(address, token).await?;
    let request = pb::DrainRequest {
        worker: worker.to_string(),
        timeout_seconds: timeout.as_secs().max(1) as u32,
    };
    Ok(head.drain(request).await?.into_inner())
}

/// Takes a draining or drained worker back at the head: it takes work again and a pending drain
/// ends as cancelled. An unknown worker is an error.
pub async fn undrain(address: &str, token: Option<&str>, worker: &str) -> Result<pb::UndrainReply> {
    let mut head = net::connect_head(address, token).await?;
    let request = pb::UndrainRequest {
        worker: worker.to_string(),
    };
    Ok(head.undrain(request).await?.into_inner())
}

/// Waits until `n` workers are registered at the head at `address`.
pub async fn wait_for_workers(
    address: &str,
    token: Option<&str>,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match status(address, token).await {
            Ok(s) if s.workers.len() >= n => return Ok(()),
            Ok(s) => format!("{} of {n} workers registered", s.workers.len()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Connect {
                address: address.into(),
                message: format!("cluster not ready after {timeout:?}: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
