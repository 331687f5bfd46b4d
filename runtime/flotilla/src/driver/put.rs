//! Puts: small values travel inline through the head; large ones go to a worker's store, through
//! a shared-memory segment the worker maps when it runs on this host, or uploaded over HTTP.

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::{self as pb, driver_op, put_object};
use serde::Serialize;

use super::{object_ref::ObjectRef, ObjectCell, Runtime, State};
use crate::{
    codec,
    error::{Error, Result},
    net::{bind::hostname, INLINE_MAX_BYTES},
    objects::shm,
};

impl Runtime {
    /// Stores a value in the cluster and returns a reference to it. Small values travel inline;
    /// large ones go to a worker's store (this worker's, inside a task).
    pub async fn put<T: Serialize + 'static>(&self, value: &T) -> Result<ObjectRef<T>> {
        let bytes = codec::encode(value)?;
        self.put_bytes(bytes).await
    }

    pub(crate) async fn put_bytes<T>(&self, bytes: Bytes) -> Result<ObjectRef<T>> {
        let id = self.mint();
        if bytes.len() <= INLINE_MAX_BYTES {
            // Recorded and queued under the submission lock, as a submission is, so that a
            // session resuming on a restarted head puts it again exactly once.
            let _queueing = self.session.queueing();
            let r = self.new_ref(id, ObjectCell::Ready(State::InlineValue(bytes.clone())));
            self.session.send(driver_op::Op::Put(pb::PutObject {
                object: id.0,
                value: Some(put_object::Value::InlineValue(bytes)),
            }));
            return Ok(r);
        }
        let size = bytes.len() as u64;
        let location = match &self.session.host {
            Some(host) => {
                host.store
                    .put(id, bytes)
                    .await
                    .map_err(|e| Error::io(format!("storing object {id}"), e))?;
                host.location.clone()
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
                    None => self.session.peers.upload(id, &location, bytes).await?,
                }
                location
            }
        };
        let stored = pb::StoredObject {
            size,
            locations: vec![location],
        };
        let _queueing = self.session.queueing();
        let r = self.new_ref(id, ObjectCell::Ready(State::Stored(stored.clone())));
        self.session.send(driver_op::Op::Put(pb::PutObject {
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
        if http_address.is_empty() || node != hostname() {
            return None;
        }
        let segment = match shm::write(id, bytes) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!(
                    object = %id,
                    "shared memory unavailable ({e}); uploading over HTTP instead"
                );
                return None;
            }
        };
        match self.session.peers.adopt(id, http_address, &segment).await {
            Ok(owned) => Some(owned),
            Err(e) => {
                tracing::warn!(object = %id, "the worker did not map the segment ({e}); uploading over HTTP instead");
                let _ = std::fs::remove_file(&segment);
                None
            }
        }
    }

    /// The worker to hold a driver's large put: the one with the least memory in use, among those
    /// not being drained.
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
            .ok_or_else(|| {
                Error::Unavailable("no worker is available to store a large object".into())
            })
    }
}
