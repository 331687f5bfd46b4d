//! A worker's object store: values in memory up to a cap, the least recently used spilled to
//! local disk beyond it and restored on demand.
//!
//! Reads and writes of spill files run on blocking threads, never under the store's lock: a
//! worker does its I/O on one thread, and a multi-gigabyte spill there would stall heartbeats,
//! dispatch and every transfer. While a victim is being written it stays in memory (and
//! readable); only once its file is complete does the entry become a spilled one.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::{HeldObject, StoreStats};

use crate::private_fs;

enum Entry {
    /// In memory (a value mapped from a shared-memory segment gives the segment back to the
    /// host's pool when its last reference is dropped); `spilling` is set while a blocking
    /// thread writes it to disk.
    Memory {
        value: Bytes,
        /// The shared-memory segment `value` maps, when it was adopted from one.
        segment: Option<PathBuf>,
        used: u64,
        spilling: bool,
    },
    Spilled {
        path: PathBuf,
        size: u64,
    },
}

#[derive(Default)]
struct Books {
    entries: HashMap<ObjectId, Entry>,
    /// Memory entries by last use.
    lru: BTreeMap<u64, ObjectId>,
    clock: u64,
    memory_bytes: u64,
    /// Memory bytes being written to disk right now.
    spilling_bytes: u64,
    spilled_bytes: u64,
}

/// The object store of one worker.
pub struct ObjectStore {
    books: Mutex<Books>,
    cap: u64,
    spill_dir: PathBuf,
}

/// A value chosen to be spilled, written outside the lock.
struct Victim {
    id: ObjectId,
    value: Bytes,
    path: PathBuf,
}

impl ObjectStore {
    /// A store keeping up to `cap` bytes in memory and spilling into `spill_dir`.
    pub fn new(cap: u64, spill_dir: PathBuf) -> Self {
        ObjectStore {
            books: Mutex::new(Books::default()),
            cap,
            spill_dir,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        // A panic while holding the lock leaves consistent maps behind; keep serving.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a value, spilling older ones if the cap is exceeded. When spilling fails (a full
    /// disk) the value is not kept: the store stays within what it could make room for.
    pub async fn put(self: &Arc<Self>, id: ObjectId, value: Bytes) -> std::io::Result<()> {
        self.insert(id, value, None).await
    }

    /// Adopts a shared-memory segment another process on this host wrote: the store takes it
    /// over (renamed after this process) and maps it rather than copying it; once the object is
    /// freed or spilled and no one here holds its bytes any more, the segment goes back to the
    /// host's pool. Returns the segment's path from now on.
    pub async fn adopt_segment(
        self: &Arc<Self>,
        id: ObjectId,
        segment: PathBuf,
    ) -> std::io::Result<PathBuf> {
        let segment = super::shm::take_over(&segment, id)?;
        let value = match super::shm::map_owned(&segment) {
            Ok(value) => value,
            Err(e) => {
                let _ = std::fs::remove_file(&segment);
                return Err(e);
            }
        };
        self.insert(id, value, Some(segment.clone())).await?;
        Ok(segment)
    }

    async fn insert(
        self: &Arc<Self>,
        id: ObjectId,
        value: Bytes,
        segment: Option<PathBuf>,
    ) -> std::io::Result<()> {
        {
            let mut books = self.lock();
            remove_entry(&mut books, id);
            books.clock += 1;
            let used = books.clock;
            books.memory_bytes += value.len() as u64;
            books.lru.insert(used, id);
            books.entries.insert(
                id,
                Entry::Memory {
                    value,
                    segment,
                    used,
                    spilling: false,
                },
            );
        }
        if let Err(e) = self.spill_over_cap(id).await {
            self.remove(id);
            return Err(e);
        }
        Ok(())
    }

    /// Writes least recently used values (other than `keep`) to disk until memory is within the
    /// cap, on a blocking thread.
    async fn spill_over_cap(self: &Arc<Self>, keep: ObjectId) -> std::io::Result<()> {
        let victims = self.choose_victims(keep);
        if victims.is_empty() {
            return Ok(());
        }
        let store = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::with_capacity(victims.len());
            let dir = private_fs::dir(&store.spill_dir);
            for v in victims {
                let outcome = match &dir {
                    Ok(()) => private_fs::write(&v.path, &v.value),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                outcomes.push((v, outcome));
            }
            store.finish_spills(outcomes)
        })
        .await;
        written.unwrap_or_else(|e| Err(std::io::Error::other(format!("spill thread: {e}"))))
    }

    fn choose_victims(&self, keep: ObjectId) -> Vec<Victim> {
        let mut books = self.lock();
        let mut victims = Vec::new();
        let candidates: Vec<ObjectId> = books.lru.values().copied().collect();
        for victim in candidates {
            if books.memory_bytes - books.spilling_bytes <= self.cap {
                break;
            }
            if victim == keep {
                continue;
            }
            let Some(Entry::Memory {
                value, spilling, ..
            }) = books.entries.get_mut(&victim)
            else {
                continue;
            };
            if *spilling {
                continue;
            }
            *spilling = true;
            let value = value.clone();
            books.spilling_bytes += value.len() as u64;
            victims.push(Victim {
                id: victim,
                path: self.spill_dir.join(format!("{victim}.obj")),
                value,
            });
        }
        victims
    }

    fn finish_spills(&self, outcomes: Vec<(Victim, std::io::Result<()>)>) -> std::io::Result<()> {
        let mut first_error = None;
        let mut books = self.lock();
        for (victim, outcome) in outcomes {
            let size = victim.value.len() as u64;
            let still_spilling = matches!(
                books.entries.get(&victim.id),
                Some(Entry::Memory { spilling: true, value, .. }) if value.len() as u64 == size
            );
            if !still_spilling {
                // Freed or replaced while it was written: the file is of no use.
                if outcome.is_ok() {
                    let _ = std::fs::remove_file(&victim.path);
                }
                continue;
            }
            books.spilling_bytes -= size;
            if let Err(e) = outcome {
                let _ = std::fs::remove_file(&victim.path);
                if let Some(Entry::Memory { spilling, .. }) = books.entries.get_mut(&victim.id) {
                    *spilling = false;
                }
                first_error.get_or_insert(e);
                continue;
            }
            let Some(Entry::Memory { used, .. }) = books.entries.remove(&victim.id) else {
                continue;
            };
            books.lru.remove(&used);
            books.memory_bytes -= size;
            books.spilled_bytes += size;
            books.entries.insert(
                victim.id,
                Entry::Spilled {
                    path: victim.path,
                    size,
                },
            );
            tracing::debug!(object = %victim.id, bytes = size, "spilled to disk");
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The value if it is in memory, without touching the disk.
    pub fn get_in_memory(&self, id: ObjectId) -> Option<Bytes> {
        let mut books = self.lock();
        books.clock += 1;
        let now = books.clock;
        let Some(Entry::Memory { value, used, .. }) = books.entries.get_mut(&id) else {
            return None;
        };
        let value = value.clone();
        let old = std::mem::replace(used, now);
        books.lru.remove(&old);
        books.lru.insert(now, id);
        Some(value)
    }

    /// The value, restored from disk (on a blocking thread) if it was spilled.
    pub async fn get(self: &Arc<Self>, id: ObjectId) -> std::io::Result<Option<Bytes>> {
        if let Some(value) = self.get_in_memory(id) {
            return Ok(Some(value));
        }
        let path = match self.lock().entries.get(&id) {
            Some(Entry::Spilled { path, .. }) => path.clone(),
            // Restored by someone else in the meantime, or freed.
            Some(Entry::Memory { .. }) => return Ok(self.get_in_memory(id)),
            None => return Ok(None),
        };
        let read = path.clone();
        let value = tokio::task::spawn_blocking(move || std::fs::read(read))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("restore thread: {e}"))))?;
        let value = Bytes::from(value);
        {
            let mut books = self.lock();
            match books.entries.get(&id) {
                Some(Entry::Spilled { path: p, size }) if *p == path => {
                    let size = *size;
                    let _ = std::fs::remove_file(&path);
                    books.spilled_bytes -= size;
                    books.memory_bytes += size;
                    books.clock += 1;
                    let now = books.clock;
                    books.lru.insert(now, id);
                    books.entries.insert(
                        id,
                        Entry::Memory {
                            value: value.clone(),
                            segment: None,
                            used: now,
                            spilling: false,
                        },
                    );
                }
                // Restored by a concurrent get: that copy is the store's.
                Some(Entry::Memory { .. }) => return Ok(Some(value)),
                _ => return Ok(None),
            }
        }
        self.spill_over_cap(id).await?;
        Ok(Some(value))
    }

    /// Whether the store holds the object.
    pub fn contains(&self, id: ObjectId) -> bool {
        self.lock().entries.contains_key(&id)
    }

    /// Frees an object.
    pub fn remove(&self, id: ObjectId) {
        remove_entry(&mut self.lock(), id);
    }

    /// Frees everything.
    pub fn clear(&self) {
        let ids: Vec<ObjectId> = self.lock().entries.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
    }

    /// Every object held, with its size and shared-memory segment: what a worker reports to a
    /// head that restarted.
    pub fn held(&self) -> Vec<HeldObject> {
        let books = self.lock();
        let mut held: Vec<HeldObject> = books
            .entries
            .iter()
            .map(|(id, entry)| match entry {
                Entry::Memory { value, segment, .. } => HeldObject {
                    object: id.0,
                    size: value.len() as u64,
                    shm_path: segment
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                },
                Entry::Spilled { size, .. } => HeldObject {
                    object: id.0,
                    size: *size,
                    shm_path: String::new(),
                },
            })
            .collect();
        held.sort_by_key(|h| h.object);
        held
    }

    /// Bytes in memory and on disk.
    pub fn stats(&self) -> StoreStats {
        let books = self.lock();
        StoreStats {
            memory_bytes: books.memory_bytes,
            spilled_bytes: books.spilled_bytes,
            objects: books.entries.len() as u64,
        }
    }
}

fn remove_entry(books: &mut Books, id: ObjectId) {
    match books.entries.remove(&id) {
        Some(Entry::Memory {
            value,
            used,
            spilling,
            ..
        }) => {
            books.lru.remove(&used);
            books.memory_bytes -= value.len() as u64;
            if spilling {
                books.spilling_bytes -= value.len() as u64;
            }
        }
        Some(Entry::Spilled { path, size }) => {
            let _ = std::fs::remove_file(path);
            books.spilled_bytes -= size;
        }
        None => {}
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        // Shared-memory segments outlive the process unless removed, pooled ones too.
        self.clear();
        super::shm::remove_own_pooled();
        let _ = std::fs::remove_dir_all(&self.spill_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spills_least_recently_used_beyond_the_cap_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ObjectStore::new(250, dir.path().join("spill")));
        let a = ObjectId(1);
        let b = ObjectId(2);
        let c = ObjectId(3);
        store.put(a, Bytes::from(vec![1u8; 100])).await.unwrap();
        store.put(b, Bytes::from(vec![2u8; 100])).await.unwrap();
        // Touch a, so b is the least recently used.
        assert_eq!(store.get(a).await.unwrap().unwrap()[0], 1);
        store.put(c, Bytes::from(vec![3u8; 100])).await.unwrap();
        let s = store.stats();
        assert_eq!((s.memory_bytes, s.spilled_bytes, s.objects), (200, 100, 3));
        assert!(dir.path().join("spill").join(format!("{b}.obj")).exists());
        // Restoring b spills the now least recently used (a).
        assert_eq!(
            store.get(b).await.unwrap().unwrap(),
            Bytes::from(vec![2u8; 100])
        );
        let s = store.stats();
        assert_eq!((s.memory_bytes, s.spilled_bytes), (200, 100));
        assert!(dir.path().join("spill").join(format!("{a}.obj")).exists());
        store.remove(a);
        assert!(!dir.path().join("spill").join(format!("{a}.obj")).exists());
        assert_eq!(store.stats().spilled_bytes, 0);
        assert_eq!(store.get(a).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_put_that_cannot_spill_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        // The spill directory cannot be created: a file stands in its place.
        let blocked = dir.path().join("spill");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let store = Arc::new(ObjectStore::new(150, blocked));
        let (a, b) = (ObjectId(1), ObjectId(2));
        store.put(a, Bytes::from(vec![1u8; 100])).await.unwrap();
        assert!(store.put(b, Bytes::from(vec![2u8; 100])).await.is_err());
        // The books are as before the failed put: a in memory, b gone.
        let s = store.stats();
        assert_eq!((s.memory_bytes, s.spilled_bytes, s.objects), (100, 0, 1));
        assert!(!store.contains(b));
        assert_eq!(
            store.get(a).await.unwrap(),
            Some(Bytes::from(vec![1u8; 100]))
        );
    }
}
