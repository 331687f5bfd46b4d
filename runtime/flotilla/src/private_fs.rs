//! Files and directories only this user may read: the state `flotilla up` keeps (it holds the
//! cluster token), a head's address file, and spilled objects. A directory someone else owns, or
//! that others may write to, is refused rather than used.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// This process's user id: the owner of its own `/proc` entry.
pub(crate) fn own_uid() -> std::io::Result<u32> {
    std::fs::metadata("/proc/self").map(|m| m.uid())
}

/// Creates `dir` (and missing parents) readable by this user only, or checks the one that is
/// there: a real directory (not a symlink), owned by this user, that no one else may write to.
pub fn dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to use {}: {why}", dir.display()),
        ))
    };
    if !meta.is_dir() {
        return refuse("it is not a directory");
    }
    if meta.uid() != own_uid()? {
        return refuse("another user owns it");
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return refuse("other users may write to it");
    }
    Ok(())
}

/// Writes `bytes` to `path` readable by this user only, replacing the file whole (readers see
/// the old content or the new, never a part).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_private_and_open_ones_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let mine = root.path().join("state");
        dir(&mine).unwrap();
        let mode = std::fs::metadata(&mine).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again: the existing one is accepted.
        dir(&mine).unwrap();

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = dir(&open).unwrap_err();
        assert!(e.to_string().contains("other users may write"), "{e}");

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert!(dir(&link).is_err(), "a symlink is not used");

        let file = mine.join("cluster.json");
        write(&file, b"{}").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write(&file, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"{\"a\":1}");
    }
}
