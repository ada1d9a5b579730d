//! The shared-memory file behind a handoff's ring, and the shim's read-only view of it.
//!
//! The shim creates one fresh file under `/dev/shm` per handoff (no memory is shared between the
//! guests before a handoff is directed) and hands its path to both QEMUs (`memory-backend-file`,
//! `share=on`). [`SharedFile`] removes it when dropped, whatever happened. [`RingWatch`] maps it
//! read-only so the shim can see, without trusting or touching the ring, when the peer publishes
//! its first completion (the completion ring's tail word,
//! [`baton_core::ring::offsets::CQ_TAIL`]).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Where shared-memory files go.
pub const SHM_DIR: &str = "/dev/shm";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// cannot create the shared-memory file
    #[error("cannot create the shared-memory file {path}")]
    Create {
        /// File path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cannot map the shared-memory file
    #[error("cannot map the shared-memory file {path}")]
    Map {
        /// File path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A shared-memory file owned by the shim: created empty (zero-filled) and removed when dropped.
#[derive(Debug)]
pub struct SharedFile {
    path: PathBuf,
    size: u64,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl SharedFile {
    /// Creates `<dir>/baton-<pid>-<nanos>-<n>` (a name nobody else uses) of `size` bytes, mode 0600.
    pub fn create(dir: &Path, size: u64) -> Result<Self, ShmError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("baton-{}-{nanos}-{n}", std::process::id()));
        let err = |source| ShmError::Create {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        // From here on the guard owns the file, so a failure below still removes it.
        let guard = Self {
            path: path.clone(),
            size,
        };
        file.set_len(size).map_err(err)?;
        Ok(guard)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        // Nothing can be done about a failure here.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A read-only shared mapping of a ring file. Unmapped when dropped.
#[derive(Debug)]
pub struct RingWatch {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only, owned by this value, and only read through atomic loads; it
// can be used from any thread.
unsafe impl Send for RingWatch {}

impl RingWatch {
    /// Maps the first `len` bytes of `path` read-only (`MAP_SHARED`, so the guests' writes show).
    pub fn open(path: &Path, len: usize) -> Result<Self, ShmError> {
        let err = |source| ShmError::Map {
            path: path.to_path_buf(),
            source,
        };
        if len == 0 {
            return Err(err(std::io::Error::other("empty mapping")));
        }
        let file = OpenOptions::new().read(true).open(path).map_err(err)?;
        let have = file.metadata().map_err(err)?.len();
        if have < len as u64 {
            return Err(err(std::io::Error::other(format!(
                "file holds {have} bytes, {len} wanted"
            ))));
        }
        // SAFETY: a fresh read-only shared mapping of an open file descriptor, at an address the
        // kernel chooses; no existing memory is affected. The fd may be closed afterwards.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(std::io::Error::other("mmap returned null")))?;
        Ok(Self { base, len })
    }

    /// The little-endian u32 at `offset`, or `None` if it lies outside the mapping or is not
    /// 4-byte aligned.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let end = offset.checked_add(4)?;
        if end > self.len || !offset.is_multiple_of(4) {
            return None;
        }
        // SAFETY: `offset..offset+4` lies inside the mapping (checked above), which stays mapped
        // while `self` lives; the address is 4-byte aligned (the page-aligned base plus a multiple
        // of 4). The guests write these words with atomic stores; an atomic load of at most 8
        // bytes is sound on read-only memory on x86_64.
        let word = unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() };
        Some(u32::from_le(word.load(Ordering::Acquire)))
    }
}

impl Drop for RingWatch {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping created in `open`, unmapped only here;
        // no reference into it outlives `self` (read_u32 returns a copy).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn file_is_created_watched_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = SharedFile::create(dir.path(), 8192).unwrap();
        let path = f.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("baton-")
        );
        let w = RingWatch::open(&path, 8192).unwrap();
        assert_eq!(w.read_u32(0x140), Some(0));
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(0x140)).unwrap();
        file.write_all(&7u32.to_le_bytes()).unwrap();
        file.flush().unwrap();
        assert_eq!(w.read_u32(0x140), Some(7));
        assert_eq!(w.read_u32(8190), None);
        assert_eq!(w.read_u32(8192), None);
        assert_eq!(w.read_u32(0x141), None);
        assert_eq!(w.read_u32(usize::MAX - 1), None);
        assert!(RingWatch::open(&path, 16384).is_err());
        let g = SharedFile::create(dir.path(), 4096).unwrap();
        assert_ne!(g.path(), f.path());
        drop(f);
        assert!(!path.exists());
        drop(w);
    }
}
