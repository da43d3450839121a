// SPDX-License-Identifier: GPL-2.0

//! Files replaced whole: what rmdev writes (saved device state, manifests,
//! the libvirt hook script) goes to a temporary file in the destination's
//! directory, owner-only while it is written, and is renamed over the
//! destination only once it is complete. A reader (a load on another host,
//! libvirt running the hook) sees the old file or the whole new one, never
//! a part; a write that fails or is abandoned leaves nothing behind.

use std::ffi::CString;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written under a temporary name, renamed over its
/// destination by [`WholeFile::commit`]; dropped uncommitted, it is
/// removed.
pub struct WholeFile {
    path: PathBuf,
    tmp: PathBuf,
    mode: u32,
    file: Option<File>,
    committed: bool,
}

impl WholeFile {
    /// Creates the temporary file for `path` (which is not touched yet);
    /// `mode` is the permission the file gets when committed, umask aside.
    pub fn create(path: &Path, mode: u32) -> Result<WholeFile> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{}: not a file name", path.display())))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let tmp = dir.unwrap_or(Path::new(".")).join(format!(
            ".{}.rmdev-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Owner-only until complete: device state may hold guest memory.
        // (A failure names the destination: the temporary name is ours.)
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        Ok(WholeFile {
            path: path.to_path_buf(),
            tmp,
            mode,
            file: Some(file),
            committed: false,
        })
    }

    /// The temporary file's path (to read back what was written before
    /// committing it).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The open temporary file.
    pub fn file(&mut self) -> Result<&mut File> {
        let tmp = &self.tmp;
        self.file
            .as_mut()
            .ok_or_else(|| Error::Usage(format!("{}: already committed", tmp.display())))
    }

    /// Gives the file its mode, flushes it, renames it over the destination
    /// and flushes the directory.
    pub fn commit(self) -> Result<()> {
        self.finish(|tmp, path| fs::rename(tmp, path))
    }

    /// Like [`WholeFile::commit`], but an existing destination is kept and
    /// the commit fails with `EEXIST` (one atomic rename, so a file created
    /// meanwhile by someone else is never replaced).
    pub fn commit_new(self) -> Result<()> {
        self.finish(rename_noreplace)
    }

    fn finish(mut self, rename: impl FnOnce(&Path, &Path) -> io::Result<()>) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.set_permissions(Permissions::from_mode(self.mode))
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(&self.tmp, e))?;
        }
        rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(d) = File::open(dir.unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for WholeFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to`:
/// `renameat2(RENAME_NOREPLACE)`; where the filesystem does not have that
/// flag (9p, some network filesystems: `EINVAL`), a hard link, which fails
/// with `EEXIST` too, and the temporary name's removal; where neither
/// exists, a look just before a plain rename (which a file created in
/// between would lose to).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: Both are valid NUL-terminated paths that outlive the call;
    // renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    ) {
        return Err(e);
    }
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if fs::symlink_metadata(to).is_ok() => {
            Err(io::Error::from_raw_os_error(libc::EEXIST))
        }
        Err(_) => fs::rename(from, to),
    }
}

/// Replaces `path` with `data` whole, with permissions `mode`.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = WholeFile::create(path, mode)?;
    let tmp = f.tmp_path().to_path_buf();
    f.file()?.write_all(data).map_err(|e| Error::io(&tmp, e))?;
    f.commit()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn abandoned_leaves_nothing_committed_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.bin");
        {
            let mut f = WholeFile::create(&p, 0o600).unwrap();
            f.file().unwrap().write_all(b"half").unwrap();
            assert_eq!(
                names(dir.path()).len(),
                1,
                "the temporary file exists while written"
            );
        }
        assert!(
            names(dir.path()).is_empty(),
            "an abandoned file leaves nothing"
        );
        fs::write(&p, b"old").unwrap();
        let mut f = WholeFile::create(&p, 0o600).unwrap();
        f.file().unwrap().write_all(b"whole").unwrap();
        assert_eq!(
            fs::read(&p).unwrap(),
            b"old",
            "the destination is untouched until the commit"
        );
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert_eq!(names(dir.path()), ["state.bin"]);
        // A commit whose rename fails (onto a non-empty directory) leaves
        // no temporary file behind.
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("x")).unwrap();
        let f = WholeFile::create(&d, 0o600).unwrap();
        assert!(f.commit().is_err());
        assert_eq!(names(dir.path()), ["d", "state.bin"]);
    }

    #[test]
    fn commit_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.bin");
        let mut f = WholeFile::create(&p, 0o600).unwrap();
        f.file().unwrap().write_all(b"first").unwrap();
        f.commit_new().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let mut f = WholeFile::create(&p, 0o600).unwrap();
        f.file().unwrap().write_all(b"second").unwrap();
        match f.commit_new() {
            Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EEXIST)),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["state.bin"], "no temporary file left");
    }

    #[test]
    fn committed_mode_is_the_one_asked() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o644, 0o755] {
            let p = dir.path().join(format!("f{mode:o}"));
            write(&p, b"x", mode).unwrap();
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
                mode
            );
        }
        // While written, the file is owner-only whatever the final mode.
        let p = dir.path().join("hook");
        let f = WholeFile::create(&p, 0o755).unwrap();
        let m = fs::metadata(f.tmp_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(m & 0o077, 0);
    }

    #[test]
    fn no_file_name_is_a_usage_error() {
        assert!(matches!(
            WholeFile::create(Path::new("/"), 0o644),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            write(Path::new(".."), b"", 0o644),
            Err(Error::Usage(_))
        ));
    }
}
