//! The running gateway's claim on its store: one gateway per database file.
//!
//! A second instance started by mistake (a unit file and a shell, two units on one path) would
//! otherwise take the live one's open calls for a crashed run's and close them. The claim is an
//! exclusive `flock(2)` on `<store>.lock`, taken before the database is opened and released by
//! the kernel when the process ends, however it ends (a `kill -9` leaves no stale claim). A
//! lock file beside the database rather than a lock on it: SQLite's own locks are `fcntl(2)`
//! locks, which `flock` emulation on some filesystems would collide with.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Held while the gateway runs on the store; dropping it releases the claim.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl StoreLock {
    /// Claims the store at `database` for this process; its pid is written in the lock file for
    /// whoever finds it taken.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it, [`StoreError::CreateDir`] when the
    /// lock file cannot be created.
    pub fn acquire(database: &Path) -> Result<StoreLock, StoreError> {
        let path = lock_path(database);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let io_error = |source| StoreError::LockFile {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::Locked {
                    path,
                    holder: holder.trim().chars().take(20).collect(),
                });
            }
            Err(errno) => return Err(io_error(errno.into())),
        }
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(StoreLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `gateway.db` -> `gateway.db.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_with_the_holder_named_until_the_first_is_released() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let database = dir.path().join("gateway.db");
        let first = match StoreLock::acquire(&database) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        match StoreLock::acquire(&database) {
            Err(StoreError::Locked { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(StoreLock::acquire(&database).is_ok());
    }
}
