//! A worker's object store: values in memory up to a cap, the least recently used spilled to
//! local disk beyond it and restored on demand.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Mutex,
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::StoreStats;

enum Entry {
    /// In memory; `segment` is the shared-memory file the value is mapped from, if any.
    Memory {
        value: Bytes,
        used: u64,
        segment: Option<PathBuf>,
    },
    Spilled {
        path: PathBuf,
        size: u64,
    },
}

struct Inner {
    entries: HashMap<ObjectId, Entry>,
    /// Memory entries by last use.
    lru: BTreeMap<u64, ObjectId>,
    clock: u64,
    memory_bytes: u64,
    spilled_bytes: u64,
}

/// The object store of one worker.
pub struct ObjectStore {
    inner: Mutex<Inner>,
    cap: u64,
    spill_dir: PathBuf,
}

impl ObjectStore {
    /// A store keeping up to `cap` bytes in memory and spilling into `spill_dir`.
    pub fn new(cap: u64, spill_dir: PathBuf) -> Self {
        ObjectStore {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                lru: BTreeMap::new(),
                clock: 0,
                memory_bytes: 0,
                spilled_bytes: 0,
            }),
            cap,
            spill_dir,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a value, spilling older ones if the cap is exceeded.
    pub fn put(&self, id: ObjectId, value: Bytes) -> std::io::Result<()> {
        self.insert(id, value, None)
    }

    /// Adopts a shared-memory segment another process on this host wrote: the store maps it
    /// rather than copying it, and deletes it when the object is freed or spilled.
    pub fn adopt_segment(&self, id: ObjectId, segment: PathBuf) -> std::io::Result<u64> {
        let value = crate::shm::map(&segment)?;
        let size = value.len() as u64;
        self.insert(id, value, Some(segment))?;
        Ok(size)
    }

    fn insert(&self, id: ObjectId, value: Bytes, segment: Option<PathBuf>) -> std::io::Result<()> {
        let mut inner = self.lock();
        remove_entry(&mut inner, id);
        inner.clock += 1;
        let used = inner.clock;
        inner.memory_bytes += value.len() as u64;
        inner.lru.insert(used, id);
        inner.entries.insert(
            id,
            Entry::Memory {
                value,
                used,
                segment,
            },
        );
        self.spill_over_cap(&mut inner, id)
    }

    fn spill_over_cap(&self, inner: &mut Inner, keep: ObjectId) -> std::io::Result<()> {
        while inner.memory_bytes > self.cap {
            let victim = inner.lru.values().copied().find(|id| *id != keep);
            let Some(victim) = victim else { break };
            let Some(Entry::Memory { value, .. }) = inner.entries.get(&victim) else {
                break;
            };
            // Written before anything changes, so a full disk loses nothing and leaves the
            // books straight.
            std::fs::create_dir_all(&self.spill_dir)?;
            let path = self.spill_dir.join(format!("{}.obj", victim));
            std::fs::write(&path, value)?;
            let Some(Entry::Memory {
                value,
                used,
                segment,
            }) = inner.entries.remove(&victim)
            else {
                break;
            };
            if let Some(segment) = segment {
                let _ = std::fs::remove_file(segment);
            }
            inner.lru.remove(&used);
            inner.memory_bytes -= value.len() as u64;
            inner.spilled_bytes += value.len() as u64;
            inner.entries.insert(
                victim,
                Entry::Spilled {
                    path,
                    size: value.len() as u64,
                },
            );
            tracing::debug!(object = %victim, bytes = value.len(), "spilled to disk");
        }
        Ok(())
    }

    /// The value, restored from disk if it was spilled.
    pub fn get(&self, id: ObjectId) -> std::io::Result<Option<Bytes>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.entries.get_mut(&id) {
            None => Ok(None),
            Some(Entry::Memory { value, used, .. }) => {
                let value = value.clone();
                let old = std::mem::replace(used, now);
                inner.lru.remove(&old);
                inner.lru.insert(now, id);
                Ok(Some(value))
            }
            Some(Entry::Spilled { path, size }) => {
                let (path, size) = (path.clone(), *size);
                let value = Bytes::from(std::fs::read(&path)?);
                let _ = std::fs::remove_file(&path);
                inner.spilled_bytes -= size;
                inner.memory_bytes += size;
                inner.lru.insert(now, id);
                inner.entries.insert(
                    id,
                    Entry::Memory {
                        value: value.clone(),
                        used: now,
                        segment: None,
                    },
                );
                self.spill_over_cap(&mut inner, id)?;
                Ok(Some(value))
            }
        }
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

    /// Bytes in memory and on disk.
    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            memory_bytes: inner.memory_bytes,
            spilled_bytes: inner.spilled_bytes,
            objects: inner.entries.len() as u64,
        }
    }
}

fn remove_entry(inner: &mut Inner, id: ObjectId) {
    match inner.entries.remove(&id) {
        Some(Entry::Memory {
            value,
            used,
            segment,
        }) => {
            inner.lru.remove(&used);
            inner.memory_bytes -= value.len() as u64;
            if let Some(segment) = segment {
                let _ = std::fs::remove_file(segment);
            }
        }
        Some(Entry::Spilled { path, size }) => {
            let _ = std::fs::remove_file(path);
            inner.spilled_bytes -= size;
        }
        None => {}
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        // Shared-memory segments outlive the process unless removed.
        self.clear();
        let _ = std::fs::remove_dir_all(&self.spill_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_least_recently_used_beyond_the_cap_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(250, dir.path().join("spill"));
        let a = ObjectId(1);
        let b = ObjectId(2);
        let c = ObjectId(3);
        store.put(a, Bytes::from(vec![1u8; 100])).unwrap();
        store.put(b, Bytes::from(vec![2u8; 100])).unwrap();
        // Touch a, so b is the least recently used.
        assert_eq!(store.get(a).unwrap().unwrap()[0], 1);
        store.put(c, Bytes::from(vec![3u8; 100])).unwrap();
        let s = store.stats();
        assert_eq!((s.memory_bytes, s.spilled_bytes, s.objects), (200, 100, 3));
        assert!(dir.path().join("spill").join(format!("{b}.obj")).exists());
        // Restoring b spills the now least recently used (a).
        assert_eq!(store.get(b).unwrap().unwrap(), Bytes::from(vec![2u8; 100]));
        let s = store.stats();
        assert_eq!((s.memory_bytes, s.spilled_bytes), (200, 100));
        assert!(dir.path().join("spill").join(format!("{a}.obj")).exists());
        store.remove(a);
        assert!(!dir.path().join("spill").join(format!("{a}.obj")).exists());
        assert_eq!(store.stats().spilled_bytes, 0);
        assert_eq!(store.get(a).unwrap(), None);
    }
}
