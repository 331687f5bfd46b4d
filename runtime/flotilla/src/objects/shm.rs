//! Zero-copy objects between processes on one host: a driver writes a large value once into a
//! file under `/dev/shm`, the worker's store maps that file instead of receiving a copy, and
//! readers on the same host map it too.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::contract::ENV_SHM_DIR;

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
        #[cfg(unix)]
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).ok()?;
    }
    // Someone else's directory (or a symlink planted in its place) is not ours to use.
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && owner(&meta) == Some(uid)).then_some(dir)
}

fn own_uid() -> Option<u32> {
    crate::private_fs::own_uid().ok()
}

fn owner(meta: &std::fs::Metadata) -> Option<u32> {
    Some(std::os::unix::fs::MetadataExt::uid(meta))
}

/// Whether `path` names a segment this module could have written (adoption takes no other).
pub fn is_segment(path: &Path) -> bool {
    let Some(dir) = segment_dir() else {
        return false;
    };
    // A regular file (not a symlink) of ours, directly in our directory.
    path.parent() == Some(dir.as_path())
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_file() && owner(&m) == own_uid())
}

/// Writes `value` into a new segment for object `id` (readable by this user only).
pub fn write(id: ObjectId, value: &[u8]) -> std::io::Result<PathBuf> {
    let dir = segment_dir().ok_or_else(|| std::io::Error::other("no /dev/shm on this host"))?;
    let path = dir.join(format!("{}-{id}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    if let Err(e) = file.write_all(value) {
        // A full /dev/shm must not keep the part written: it would stay full.
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
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

/// Removes segments whose owning process (the pid their name starts with) is gone: those a
/// killed worker held, or a driver wrote and died before handing over. Returns how many.
pub fn remove_orphans() -> usize {
    let Some(dir) = segment_dir() else { return 0 };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Maps a segment read-only; the returned bytes share the pages with every other mapping.
#[allow(unsafe_code)]
pub fn map(path: &Path) -> std::io::Result<Bytes> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Never through a symlink, and checked on the open file itself, so nothing can be swapped
    // in between a check of the path and the mapping.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || owner(&meta) != own_uid() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of this user",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a segment is written completely before its path is handed to anyone, and no
    // process writes to it afterwards; freeing unlinks the file rather than truncating it, so
    // the pages stay valid for as long as this mapping lives. Mapping (instead of reading) is
    // what makes a same-host put/get of a large value cost one copy instead of four.
    let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_segment_maps_back_and_is_recognised() {
        if segment_dir().is_none() {
            return; // no /dev/shm: the store falls back to copies, tested elsewhere
        }
        let id = ObjectId(u64::from(std::process::id()) << 20 | 7);
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
        let id = ObjectId(u64::from(std::process::id()) << 20 | 9);
        let written = write(ObjectId(id.0 + 1), b"mine").unwrap();
        let mine = take_over(&written, id).unwrap();
        assert!(!written.exists() || written == mine);
        assert!(remove_orphans() >= 1);
        assert!(!orphan.exists(), "a gone process's segment is removed");
        assert_eq!(
            &map(&mine).unwrap()[..],
            b"mine",
            "a live process's segment stays"
        );
        std::fs::remove_file(&mine).unwrap();
    }
}
