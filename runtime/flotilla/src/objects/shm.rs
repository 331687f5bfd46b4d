//! Zero-copy objects between processes on one host: a driver writes a large value once into a
//! file under `/dev/shm`, the worker's store maps that file instead of receiving a copy, and
//! readers on the same host map it too.
//!
//! Segments are reused. A freed one is renamed `free-…` into this host's pool (at most
//! [`pool_limit`] bytes), and the next large put of about its size claims it: its pages are
//! already allocated, so the copy into it runs at memory speed instead of paying the kernel's
//! page allocation and zeroing. Immutability holds through file locks: every mapping holds a
//! shared lock on its file for as long as it lives, and a writer claims a pooled segment only
//! with an exclusive lock, which no shared lock allows. So a reader never sees the bytes it maps
//! change, and a segment comes back into use only once no process maps it any more.
//!
//! A process also keeps its writable mappings of the segments it wrote (at most
//! [`pool_limit`] bytes of them), and prefers those segments when it claims one from the pool:
//! the next write into one skips mapping it and faulting its page tables in (2.7 ms for 100 MB
//! here, against 12 ms for the copy itself), and the unmapping after. Such a kept mapping is
//! only written through while this process holds the segment's exclusive lock again, so it
//! changes nothing for readers; one whose file was deleted is let go at the next claim. Each
//! keeps its own open file (without a lock), so its segment's inode, and with it the identity it
//! is found by, can belong to no other segment.

use std::{
    collections::{HashSet, VecDeque},
    fs::{File, OpenOptions, TryLockError},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::contract::ENV_SHM_DIR;

/// How the names of pooled segments start.
const FREE: &str = "free-";

/// Where segments live: a directory of this user's in `/dev/shm` (or `FLOTILLA_SHM_DIR`);
/// `None` where the host has none.
pub fn segment_dir() -> Option<PathBuf> {
    let root = std::env::var_os(ENV_SHM_DIR)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    if !root.is_dir() {
        return None;
    }
    let uid = own_uid()?;
    let dir = root.join(format!("flotilla-{uid}"));
    if std::fs::create_dir(&dir).is_ok() {
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).ok()?;
    }
    // Someone else's directory (or a symlink planted in its place) is not ours to use.
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && owner(&meta) == Some(uid)).then_some(dir)
}

fn own_uid() -> Option<u32> {
    crate::private_fs::own_uid().ok()
}

fn owner(meta: &std::fs::Metadata) -> Option<u32> {
    Some(meta.uid())
}

fn no_shm() -> std::io::Error {
    std::io::Error::other("no /dev/shm on this host")
}

/// Most bytes of freed segments kept for reuse on this host: a sixteenth of `/dev/shm`, at most
/// 1 GiB. Freed segments beyond it are deleted.
pub fn pool_limit() -> u64 {
    const MAX: u64 = 1 << 30;
    rustix::fs::statvfs("/dev/shm").map_or(0, |s| (s.f_blocks * s.f_frsize / 16).min(MAX))
}

/// Whether `path` names a segment this module could have written (adoption takes no other).
pub fn is_segment(path: &Path) -> bool {
    let Some(dir) = segment_dir() else {
        return false;
    };
    // A regular file (not a symlink) of ours, directly in our directory, not a pooled one.
    path.parent() == Some(dir.as_path())
        && !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(FREE))
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_file() && owner(&m) == own_uid())
}

/// A segment being written: locked exclusively, so no one maps it until [`Writer::finish`].
/// Dropped unfinished, it is deleted.
pub struct Writer {
    file: File,
    path: PathBuf,
    len: usize,
    warm: bool,
    finished: bool,
}

impl Writer {
    /// A segment of `len` bytes for object `id`, named after this process: a pooled one of
    /// about that size when there is one (its pages already allocated), or a new one.
    pub fn create(id: ObjectId, len: usize) -> std::io::Result<Writer> {
        Writer::create_named(&format!("{}-{id}", std::process::id()), len)
    }

    fn create_named(name: &str, len: usize) -> std::io::Result<Writer> {
        let dir = segment_dir().ok_or_else(no_shm)?;
        let path = dir.join(name);
        let (file, warm) = match claim(&dir, &path, len as u64) {
            Some(file) => (file, true),
            None => (new_segment(&path)?, false),
        };
        let writer = Writer {
            file,
            path,
            len,
            warm,
            finished: false,
        };
        writer.file.set_len(len as u64)?;
        Ok(writer)
    }

    /// A segment of `len` bytes for a copy of object `id` this process receives from another
    /// host: named apart from the segments of its store, and given back to the pool once the
    /// last reference to the copy is dropped (see [`Landing::freeze`]).
    pub fn create_copy(id: ObjectId, len: usize) -> std::io::Result<Writer> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Writer::create_named(&format!("{}-{id}-copy{n}", std::process::id()), len)
    }

    /// Whether the segment came from the pool, its pages already allocated.
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// Writes `value` (exactly the segment's length) into the segment.
    pub fn write_all(&mut self, value: &[u8]) -> std::io::Result<()> {
        if value.len() != self.len {
            return Err(std::io::Error::other(format!(
                "{} bytes for a segment of {}",
                value.len(),
                self.len
            )));
        }
        // One `pwrite`: the kernel copies straight into the segment's pages, allocating any
        // missing ones without zeroing them first, which mapping and faulting them in would.
        self.file.write_all_at(value, 0)
    }

    /// Lets `fill` write the segment's bytes in place, through a writable mapping with its pages
    /// mapped up front: an encoder writes the value straight into shared memory.
    pub fn fill_with<R>(&mut self, fill: impl FnOnce(&mut [u8]) -> R) -> std::io::Result<R> {
        if self.len == 0 {
            return Ok(fill(&mut []));
        }
        let mut mapped = self.writable()?;
        // A kept mapping may be longer than the segment is now: only its length is touched.
        let result = fill(&mut mapped.map[..self.len]);
        keep(mapped);
        Ok(result)
    }

    /// The segment mapped writable, its pages mapped: this process's kept mapping of it when
    /// there is one (maybe longer than the segment is now), else a new one.
    #[allow(unsafe_code)]
    fn writable(&self) -> std::io::Result<Kept> {
        let identity = Identity::of(&self.file)?;
        if let Some(kept) = take_kept(identity, self.len) {
            return Ok(kept);
        }
        let file = reopen(&self.file)?;
        // SAFETY: the file is this writer's alone: newly created under a name only this process
        // uses, or claimed from the pool under such a name with an exclusive lock, which every
        // other mapping of it (each holding a shared lock) would have prevented. Nothing else
        // maps or resizes it while the writer (or the landing it becomes, which takes the lock
        // along) holds it. A landing's mapping is made read-only before anyone else may see it,
        // in `Landing::freeze`. The mapping is kept afterwards only to be written through again
        // under a later exclusive claim.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(self.len)
                .populate()
                .map_mut(&file)?
        };
        Ok(Kept {
            identity,
            file,
            map,
        })
    }

    /// The segment mapped writable, to be filled piece by piece (by transfers landing in it)
    /// and then frozen into the bytes of a copy.
    pub fn into_landing(mut self) -> std::io::Result<Landing> {
        let mapped = self.writable()?;
        let file = self.file.try_clone()?;
        self.finished = true;
        Ok(Landing {
            mapped: Some(mapped),
            len: self.len,
            file,
            path: self.path.clone(),
            frozen: false,
        })
    }

    /// The written segment's path, ready to be mapped (the exclusive lock goes with the file).
    pub fn finish(mut self) -> PathBuf {
        self.finished = true;
        self.path.clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            // A part written (a full /dev/shm, a failed encoding) is of no use to anyone.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A segment mapped writable while a copy lands in it; deleted if dropped before
/// [`Landing::freeze`].
pub struct Landing {
    /// Maybe a kept mapping longer than the segment: only `len` bytes of it are the landing's.
    mapped: Option<Kept>,
    len: usize,
    /// The open file holding the exclusive lock.
    file: File,
    path: PathBuf,
    frozen: bool,
}

impl std::ops::Deref for Landing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.mapped.as_ref().map_or(&[], |m| &m.map[..self.len])
    }
}

impl std::ops::DerefMut for Landing {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        self.mapped.as_mut().map_or(&mut [], |m| &mut m.map[..len])
    }
}

impl Landing {
    /// The landed bytes, read-only from now on: shared-locked like any mapping, and given back
    /// to the pool when the last reference to them is dropped.
    pub fn freeze(mut self) -> std::io::Result<Bytes> {
        // Nobody else knows the segment's name, so trading the exclusive lock for a shared one
        // (not atomically) lets no writer in between.
        self.file.lock_shared()?;
        let Some(Kept {
            identity,
            file: mapped,
            map,
        }) = self.mapped.take()
        else {
            return Err(std::io::Error::other("a landing is frozen once"));
        };
        let map = map.make_read_only()?;
        // The same open file, so the same lock, for as long as the mapping lives.
        let locked = self.file.try_clone()?;
        self.frozen = true;
        let bytes = Bytes::from_owner(Mapping {
            map: Some(map),
            locked: Some(locked),
            release: Some(self.path.clone()),
            keep: Some((identity, mapped)),
        });
        Ok(bytes.slice(..self.len))
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if !self.frozen {
            // A transfer that failed part way: its bytes are of no use.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn new_segment(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Takes a pooled segment of about `len` bytes (half to twice that) under the name `path`,
/// locked exclusively. `None` when the pool has none, or none that no one maps any more.
fn claim(dir: &Path, path: &Path, len: u64) -> Option<File> {
    let kept = forget_gone();
    let mut candidates: Vec<(bool, u64, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(FREE)))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let size = meta.len();
            (size >= len / 2 && size <= len.saturating_mul(2))
                .then(|| (!kept.contains(&Identity::from(&meta)), size, e.path()))
        })
        .collect();
    // Those this process still maps first, then the closest in size.
    candidates.sort_by_key(|(unmapped, size, _)| (*unmapped, size.abs_diff(len)));
    for (_, _, free) in candidates {
        // The rename decides between processes claiming at once: only one finds it there.
        if std::fs::rename(&free, path).is_err() {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        else {
            let _ = std::fs::remove_file(path);
            continue;
        };
        match file.try_lock() {
            Ok(()) => return Some(file),
            Err(_) => {
                // Still mapped somewhere: back into the pool until that mapping ends.
                let _ = std::fs::rename(path, free);
            }
        }
    }
    None
}

/// Writes `value` into a new segment for object `id` (readable by this user only).
pub fn write(id: ObjectId, value: &[u8]) -> std::io::Result<PathBuf> {
    let mut writer = Writer::create(id, value.len())?;
    writer.write_all(value)?;
    Ok(writer.finish())
}

/// Gives a freed segment back: into this host's pool while the pool has room, else deleted.
pub fn release(segment: &Path) {
    let pooled = (|| {
        let dir = segment.parent()?;
        let size = std::fs::symlink_metadata(segment).ok()?.len();
        (pool_bytes_in(dir) + size <= pool_limit()).then_some(())?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{FREE}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        std::fs::rename(segment, dir.join(name)).ok()
    })();
    if pooled.is_none() {
        let _ = std::fs::remove_file(segment);
    }
}

fn pool_bytes_in(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(FREE)))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes of freed segments waiting in this host's pool.
pub fn pool_bytes() -> u64 {
    segment_dir().map_or(0, |dir| pool_bytes_in(&dir))
}

/// Empties this host's pool (the next large puts write to fresh pages). Returns how many
/// segments it deleted.
pub fn clear_pool() -> usize {
    forget_all();
    remove_where(|name| name.starts_with(FREE))
}

/// Makes a segment this process's: renamed after this process, so it is removed as an orphan if
/// the process dies holding it. Returns its new path.
pub fn take_over(segment: &Path, id: ObjectId) -> std::io::Result<PathBuf> {
    let dir = segment
        .parent()
        .ok_or_else(|| std::io::Error::other("a segment lives in a directory"))?;
    let owned = dir.join(format!("{}-{id}", std::process::id()));
    if owned != segment {
        std::fs::rename(segment, &owned)?;
    }
    Ok(owned)
}

/// Removes segments whose owning process (the pid their name starts with, after `free-` for a
/// pooled one) is gone: those a killed worker held, or a driver wrote and died before handing
/// over, and those pooled by a process that has exited. Returns how many.
pub fn remove_orphans() -> usize {
    remove_where(|name| {
        let name = name.strip_prefix(FREE).unwrap_or(name);
        name.split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// Removes the pooled segments this process put into the pool (when it exits: pooled memory
/// must not outlive the cluster).
pub fn remove_own_pooled() -> usize {
    forget_all();
    let own = format!("{FREE}{}-", std::process::id());
    remove_where(|name| name.starts_with(&own))
}

fn remove_where(doomed: impl Fn(&str) -> bool) -> usize {
    let Some(dir) = segment_dir() else { return 0 };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&doomed))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Which file a segment is, whatever its name: renames (into the pool, to a new owner) keep it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(file: &File) -> std::io::Result<Identity> {
        Ok(Identity::from(&file.metadata()?))
    }
}

impl From<&std::fs::Metadata> for Identity {
    fn from(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The same file opened again, apart from `file`'s lock: a mapping holds the open file it was
/// made from, so a mapping kept past a write must not be made from the one holding the writer's
/// exclusive lock, or the lock would outlive the write.
fn reopen(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A writable mapping of a segment this process wrote, kept for its next write, with the open
/// file it was made from (no lock on it). Holding that file open keeps the segment's inode, so
/// no other segment can come to have its identity, and tells when the segment was deleted.
struct Kept {
    identity: Identity,
    file: File,
    map: memmap2::MmapMut,
}

/// This process's kept mappings, oldest first. Taken out while written through, so no two
/// writers share one.
static KEPT: Mutex<VecDeque<Kept>> = Mutex::new(VecDeque::new());

fn kept() -> std::sync::MutexGuard<'static, VecDeque<Kept>> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kept mapping of the segment `identity`, when it covers `len` bytes.
fn take_kept(identity: Identity, len: usize) -> Option<Kept> {
    let mut kept = kept();
    let at = kept.iter().position(|k| k.identity == identity)?;
    let found = kept.remove(at)?;
    (found.map.len() >= len).then_some(found)
}

/// Keeps a mapping, letting the oldest go while the kept ones map more than the pool may hold.
fn keep(mapped: Kept) {
    let limit = pool_limit();
    if mapped.map.len() as u64 > limit {
        return;
    }
    let mut kept = kept();
    kept.push_back(mapped);
    while kept.iter().map(|k| k.map.len() as u64).sum::<u64>() > limit {
        kept.pop_front();
    }
}

/// Lets go of the kept mappings whose segment was deleted (their pages are of no use any more);
/// returns the identities of those still kept.
fn forget_gone() -> HashSet<Identity> {
    let mut kept = kept();
    kept.retain(|k| k.file.metadata().is_ok_and(|m| m.nlink() > 0));
    kept.iter().map(|k| k.identity).collect()
}

fn forget_all() {
    kept().clear();
}

/// A segment mapped read-only, with the shared lock that keeps it out of the pool while mapped.
struct Mapping {
    map: Option<memmap2::Mmap>,
    locked: Option<File>,
    /// A segment this process owns, given back to the pool when the mapping ends.
    release: Option<PathBuf>,
    /// A landing's mapping, made writable again and kept for the next write when it ends.
    keep: Option<(Identity, File)>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unmapped (or kept, holding no lock) and unlocked first, so a writer may claim the
        // segment the moment it is pooled.
        if let (Some(map), Some((identity, file))) = (self.map.take(), self.keep.take()) {
            if let Ok(map) = map.make_mut() {
                keep(Kept {
                    identity,
                    file,
                    map,
                });
            }
        }
        self.locked.take();
        if let Some(path) = self.release.take() {
            release(&path);
        }
    }
}

/// Maps a segment read-only, as [`map`] does, for the process that owns it (a store that took it
/// over): when the last reference to the bytes is dropped, the segment goes back to the pool.
pub fn map_owned(path: &Path) -> std::io::Result<Bytes> {
    map_segment(path, true)
}

/// Maps a segment read-only; the returned bytes share the pages with every other mapping, and
/// keep the segment from being reused until the last of them is dropped.
pub fn map(path: &Path) -> std::io::Result<Bytes> {
    map_segment(path, false)
}

#[allow(unsafe_code)]
fn map_segment(path: &Path, owned: bool) -> std::io::Result<Bytes> {
    // Never through a symlink, and checked on the open file itself, so nothing can be swapped
    // in between a check of the path and the mapping.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || owner(&meta) != own_uid() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of this user",
            path.display()
        )));
    }
    let gone = || std::io::Error::other(format!("{} was freed", path.display()));
    match file.try_lock_shared() {
        Ok(()) => {}
        // Claimed from the pool by a writer: this is no longer the object that was asked for.
        Err(TryLockError::WouldBlock) => return Err(gone()),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Freed and reused between the open and the lock: the name is another file's now, or none.
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == meta.ino()) {
        return Err(gone());
    }
    if meta.len() == 0 {
        if owned {
            release(path);
        }
        return Ok(Bytes::new());
    }
    // SAFETY: a segment is written completely before its path is handed to anyone, and no
    // process writes to it afterwards while anyone maps it: this mapping holds a shared lock on
    // it, and a writer reuses a segment only with an exclusive one. Freeing renames or unlinks
    // the file rather than truncating it, so the pages stay valid for as long as this mapping
    // lives. Mapping (instead of reading) is what makes a same-host put/get of a large value
    // cost one copy instead of four.
    let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
    Ok(Bytes::from_owner(Mapping {
        map: Some(map),
        locked: Some(file),
        release: owned.then(|| path.to_path_buf()),
        keep: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_id(n: u64) -> ObjectId {
        ObjectId(u64::from(std::process::id()) << 20 | n)
    }

    #[test]
    fn a_written_segment_maps_back_and_is_recognised() {
        if segment_dir().is_none() {
            return; // no /dev/shm: the store falls back to copies, tested elsewhere
        }
        let id = test_id(7);
        let path = write(id, b"shared bytes").unwrap();
        assert!(is_segment(&path));
        assert!(!is_segment(Path::new("/etc/passwd")));
        assert_eq!(&map(&path).unwrap()[..], b"shared bytes");
        std::fs::remove_file(&path).unwrap();
        assert!(map(&path).is_err());
        // A symlink to a segment is refused, even one of ours.
        let real = write(ObjectId(id.0 + 1), b"x").unwrap();
        let link = segment_dir()
            .unwrap()
            .join(format!("link-{}", std::process::id()));
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(!is_segment(&link));
        assert!(map(&link).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&real).unwrap();
    }

    #[test]
    fn segments_of_gone_processes_are_removed_and_taken_over_ones_stay() {
        let Some(dir) = segment_dir() else {
            return; // no /dev/shm here
        };
        // A pid above the kernel's maximum (4194304) never runs.
        let orphan = dir.join("4294967-1");
        std::fs::write(&orphan, b"left behind").unwrap();
        let pooled_orphan = dir.join("free-4294967-1");
        std::fs::write(&pooled_orphan, b"pooled by the dead").unwrap();
        let id = test_id(9);
        let written = write(ObjectId(id.0 + 1), b"mine").unwrap();
        let mine = take_over(&written, id).unwrap();
        assert!(!written.exists() || written == mine);
        assert!(remove_orphans() >= 2);
        assert!(!orphan.exists(), "a gone process's segment is removed");
        assert!(!pooled_orphan.exists(), "and so is one it pooled");
        assert_eq!(
            &map(&mine).unwrap()[..],
            b"mine",
            "a live process's segment stays"
        );
        std::fs::remove_file(&mine).unwrap();
    }

    /// The pool is shared by every test of this process (and host): tests that depend on what
    /// it holds run one at a time.
    static POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_freed_segment_is_reused_only_once_no_one_maps_it() {
        let Some((dir, _pool)) = pool_to_myself() else {
            return; // no /dev/shm here
        };
        // An odd size no other test or process uses, so only our segment fits it.
        let len = 3 * 1024 * 1024 + 4321;
        let first = write(test_id(20), &vec![1u8; len]).unwrap();
        let reader = map(&first).unwrap();
        release(&first);
        assert!(!first.exists(), "freed: out of its name and into the pool");

        // Mapped still: a writer of the same size may not take it and gets a fresh segment.
        let mut second = Writer::create(test_id(21), len).unwrap();
        assert!(!second.is_warm());
        second.write_all(&vec![2u8; len]).unwrap();
        let second = second.finish();
        assert!(
            reader.iter().all(|b| *b == 1),
            "a reader's bytes never change"
        );
        assert_eq!(map(&second).unwrap()[0], 2);

        // Once the last mapping is gone, the pooled segment is claimed, filled in place.
        drop(reader);
        let mut third = Writer::create(test_id(22), len - 1).unwrap();
        assert!(third.is_warm(), "the freed segment came back");
        third
            .fill_with(|buf| buf.iter_mut().for_each(|b| *b = 3))
            .unwrap();
        let third = third.finish();
        let value = map(&third).unwrap();
        assert_eq!(value.len(), len - 1);
        assert!(value.iter().all(|b| *b == 3));
        // The old name maps nothing now: a stale location is not someone else's bytes.
        assert!(map(&first).is_err());

        // A writer dropped unfinished leaves nothing behind.
        let abandoned = Writer::create(test_id(23), 10).unwrap();
        let abandoned_path = dir.join(format!("{}-{}", std::process::id(), test_id(23)));
        assert!(abandoned_path.exists());
        drop(abandoned);
        assert!(!abandoned_path.exists());

        drop(value);
        std::fs::remove_file(&second).unwrap();
        std::fs::remove_file(&third).unwrap();
        remove_own_pooled();
    }

    #[test]
    fn an_owned_segment_goes_back_to_the_pool_with_its_last_reference() {
        let Some((dir, _pool)) = pool_to_myself() else {
            return; // no /dev/shm here
        };
        let path = write(test_id(40), b"held twice").unwrap();
        let value = map_owned(&path).unwrap();
        let clone = value.slice(5..);
        drop(value);
        assert!(path.exists(), "a reference is left");
        assert_eq!(own_pooled_bytes(&dir), 0);
        drop(clone);
        assert!(!path.exists());
        assert_eq!(
            own_pooled_bytes(&dir),
            10,
            "pooled, unlocked: claimable at once"
        );
        let claimed = Writer::create(test_id(41), 10).unwrap();
        assert!(claimed.is_warm());
        drop(claimed);
        remove_own_pooled();
    }

    #[test]
    fn a_mapping_kept_for_the_next_write_holds_no_lock_and_is_let_go_with_its_file() {
        let Some((_dir, _pool)) = pool_to_myself() else {
            return; // no /dev/shm here
        };
        let len = 5 * 1024 * 1024 + 77;
        let kept_len = || kept().iter().map(|k| k.map.len()).sum::<usize>();
        let mut first = Writer::create(test_id(50), len).unwrap();
        first.fill_with(|b| b.fill(1)).unwrap();
        let identity = Identity::of(&first.file).unwrap();
        let first = first.finish();
        assert!(kept_len() >= len, "the writable mapping is kept");
        // The writer's exclusive lock ended with it, though its mapping lives on.
        let reader = map_owned(&first).unwrap();
        assert!(reader.iter().all(|b| *b == 1));
        drop(reader); // back into the pool

        // Claimed again, the segment is written through the kept mapping.
        let mut second = Writer::create(test_id(51), len).unwrap();
        assert!(second.is_warm());
        assert!(Identity::of(&second.file).unwrap() == identity);
        second
            .fill_with(|b| {
                assert!(
                    !kept().iter().any(|k| k.identity == identity),
                    "taken out while written"
                );
                b.fill(2);
            })
            .unwrap();
        assert!(
            kept().iter().any(|k| k.identity == identity),
            "and kept again"
        );
        let second = second.finish();
        let value = map(&second).unwrap();
        assert_eq!(value.len(), len);
        assert!(value.iter().all(|b| *b == 2));
        drop(value);

        // A landing (a copy received) keeps its mapping too, once its bytes are dropped, and
        // leaves the segment claimable.
        let mut landing = Writer::create_copy(test_id(53), len)
            .unwrap()
            .into_landing()
            .unwrap();
        landing.fill(3);
        let landed = landing.freeze().unwrap();
        assert_eq!(landed.len(), len);
        assert!(landed.iter().all(|b| *b == 3));
        let kept_before = kept_len();
        drop(landed);
        assert!(kept_len() > kept_before, "kept when its bytes were dropped");
        let mut third = Writer::create(test_id(54), len).unwrap();
        assert!(
            third.is_warm(),
            "and its segment came back to the pool, unlocked"
        );
        third.fill_with(|b| b.fill(4)).unwrap();
        let third = third.finish();
        assert!(map(&third).unwrap().iter().all(|b| *b == 4));
        std::fs::remove_file(&third).unwrap();

        // Deleted, its pages are let go at the next claim.
        std::fs::remove_file(&second).unwrap();
        drop(Writer::create(test_id(52), 10).unwrap());
        assert!(!kept().iter().any(|k| k.identity == identity));
        remove_own_pooled();
        assert_eq!(kept_len(), 0);
    }

    /// The segment directory, and the pool to this test (of this process's): none of this
    /// process's segments in it. `None` without `/dev/shm`.
    fn pool_to_myself() -> Option<(PathBuf, std::sync::MutexGuard<'static, ()>)> {
        let dir = segment_dir()?;
        let guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        remove_own_pooled();
        Some((dir, guard))
    }

    /// Bytes this process put into the pool (other processes on the host use it too).
    fn own_pooled_bytes(dir: &Path) -> u64 {
        let own = format!("{FREE}{}-", std::process::id());
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&own)))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn the_pool_is_bounded_and_cleared() {
        let Some((dir, _pool)) = pool_to_myself() else {
            return; // no /dev/shm here
        };
        let small = write(test_id(30), b"small").unwrap();
        release(&small);
        assert_eq!(own_pooled_bytes(&dir), 5);
        assert!(pool_bytes() >= 5);
        // A segment larger than the pool may hold is deleted, not pooled.
        let huge = dir.join(format!("{}-{}", std::process::id(), test_id(31)));
        let file = new_segment(&huge).unwrap();
        file.set_len(pool_limit() + 1).unwrap(); // a hole: no memory used
        release(&huge);
        assert!(!huge.exists());
        assert_eq!(own_pooled_bytes(&dir), 5);
        assert_eq!(remove_own_pooled(), 1);
        assert_eq!(own_pooled_bytes(&dir), 0);
    }
}
