//! Puts: small values travel inline through the head; large ones go to a worker's store, through
//! a shared-memory segment the worker maps when it runs on this host, or uploaded over HTTP.

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::{self as pb, driver_op, put_object};
use serde::Serialize;

use super::{
    object_ref::{collecting_nested, ObjectRef},
    ObjectCell, Runtime, State,
};
use crate::{
    codec,
    error::{Error, Result},
    net::{bind::hostname, INLINE_MAX_BYTES},
    objects::shm,
};

impl Runtime {
    /// Stores a value in the cluster and returns a reference to it. Small values travel inline;
    /// large ones go to a worker's store (this worker's, inside a task); from a driver on the
    /// store's host, a large value is encoded straight into the shared memory the store maps.
    ///
    /// References inside the value are held by it: what they point to lives as long as the
    /// returned reference's object does.
    pub async fn put<T: Serialize + 'static>(&self, value: &T) -> Result<ObjectRef<T>> {
        // The sizing pass meets every reference the value holds.
        let (size, contained) = collecting_nested(|| codec::encoded_len(value));
        let r = self.put_value(value, size?).await?;
        if !contained.is_empty() {
            // After the put, before `contained` can be released: all on the session's stream.
            self.session.report_contained(r.id(), &contained);
        }
        Ok(r)
    }

    async fn put_value<T: Serialize + 'static>(
        &self,
        value: &T,
        size: usize,
    ) -> Result<ObjectRef<T>> {
        if size <= INLINE_MAX_BYTES || self.session.host.is_some() {
            return self.put_bytes(codec::encode(value)?).await;
        }
        let fill = |segment: &mut shm::Writer| -> Result<()> {
            if segment.is_warm() {
                // Pages already there: encode in place, no buffer in between.
                segment
                    .fill_with(|buf| codec::encode_into(value, buf))
                    .map_err(|e| Error::io(format!("mapping a segment of {size} bytes"), e))??;
            } else {
                // Fresh pages are faster allocated by a write than by faulting a mapping.
                let bytes = codec::encode(value)?;
                segment
                    .write_all(&bytes)
                    .map_err(|e| Error::io(format!("writing a segment of {size} bytes"), e))?;
            }
            Ok(())
        };
        self.put_large(size, fill, || codec::encode(value)).await
    }

    /// Stores a [`Blob`](crate::Blob) of `size` bytes that `fill` writes: from a driver on a
    /// worker's host, straight into the shared memory the worker maps (one pass over the bytes,
    /// no buffer in between); otherwise through a buffer, as [`Runtime::put`].
    pub async fn put_blob_with(
        &self,
        size: usize,
        fill: impl Fn(&mut [u8]),
    ) -> Result<ObjectRef<codec::Blob>> {
        let buffered = || {
            let mut v = vec![0; size];
            fill(&mut v);
            Bytes::from(v)
        };
        if size <= INLINE_MAX_BYTES || self.session.host.is_some() {
            return self.put_bytes(buffered()).await;
        }
        let write = |segment: &mut shm::Writer| {
            segment
                .fill_with(&fill)
                .map_err(|e| Error::io(format!("mapping a segment of {size} bytes"), e))
        };
        self.put_large(size, write, || Ok(buffered())).await
    }

    pub(crate) async fn put_bytes<T>(&self, bytes: Bytes) -> Result<ObjectRef<T>> {
        if bytes.len() <= INLINE_MAX_BYTES {
            let id = self.mint();
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
        let fill = |segment: &mut shm::Writer| {
            segment
                .write_all(&bytes)
                .map_err(|e| Error::io(format!("writing a segment of {} bytes", bytes.len()), e))
        };
        self.put_large(bytes.len(), fill, || Ok(bytes.clone()))
            .await
    }

    /// Stores a large value of `size` bytes: in this worker's store, in a shared-memory segment
    /// that `fill` writes and a worker on this host maps, or else as the bytes `encode` gives,
    /// uploaded.
    async fn put_large<T>(
        &self,
        size: usize,
        fill: impl FnOnce(&mut shm::Writer) -> Result<()>,
        encode: impl FnOnce() -> Result<Bytes>,
    ) -> Result<ObjectRef<T>> {
        let id = self.mint();
        let location = match &self.session.host {
            Some(host) => {
                host.store
                    .put(id, encode()?)
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
                    .share_on_host(id, &target.node, &location.http_address, size, fill)
                    .await?
                {
                    Some(segment) => location.shm_path = segment,
                    None => self.session.peers.upload(id, &location, encode()?).await?,
                }
                location
            }
        };
        let stored = pb::StoredObject {
            size: size as u64,
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

    /// On the worker's own host, writes the value once into shared memory (a segment from this
    /// host's pool when there is one) and lets the worker map it: no upload, and gets on this
    /// host map it too. `None` when that is not possible; an error when the value could not be
    /// encoded.
    async fn share_on_host(
        &self,
        id: ObjectId,
        node: &str,
        http_address: &str,
        size: usize,
        fill: impl FnOnce(&mut shm::Writer) -> Result<()>,
    ) -> Result<Option<String>> {
        if http_address.is_empty() || node != hostname() {
            return Ok(None);
        }
        let mut segment = match shm::Writer::create(id, size) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!(
                    object = %id,
                    "shared memory unavailable ({e}); uploading over HTTP instead"
                );
                return Ok(None);
            }
        };
        if let Err(e) = fill(&mut segment) {
            if !matches!(e, Error::Io { .. }) {
                return Err(e); // the value cannot be encoded: no upload would help
            }
            // A full /dev/shm; the part written goes with the dropped segment.
            tracing::warn!(
                object = %id,
                "shared memory unavailable ({e}); uploading over HTTP instead"
            );
            return Ok(None);
        }
        let segment = segment.finish();
        match self.session.peers.adopt(id, http_address, &segment).await {
            Ok(owned) => Ok(Some(owned)),
            Err(e) => {
                tracing::warn!(object = %id, "the worker did not map the segment ({e}); uploading over HTTP instead");
                let _ = std::fs::remove_file(&segment);
                Ok(None)
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
