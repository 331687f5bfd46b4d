//! Zero-copy objects between processes on one host: a driver writes a large value once into a
//! file under `/dev/shm`, the worker's store maps that file instead of receiving a copy, and
//! readers on the same host map it too.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use flotilla_core::ObjectId;

/// Where segments live; `None` where the host has no `/dev/shm`.
pub fn segment_dir() -> Option<PathBuf> {
    let root = Path::new("/dev/shm");
    if !root.is_dir() {
        return None;
    }
    let dir = root.join(format!(
        "flotilla-{}",
        std::env::var("USER").unwrap_or_else(|_| "user".into())
    ));
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Whether `path` names a segment this module could have written (adoption takes no other).
pub fn is_segment(path: &Path) -> bool {
    segment_dir().is_some_and(|dir| path.parent() == Some(dir.as_path())) && path.is_file()
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
    file.write_all(value)?;
    Ok(path)
}

/// Maps a segment read-only; the returned bytes share the pages with every other mapping.
#[allow(unsafe_code)]
pub fn map(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
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
    }
}
