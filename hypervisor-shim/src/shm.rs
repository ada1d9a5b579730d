//! The shared-memory file behind a handoff's ring, and the shim's read-only view of it.
//!
//! The shim creates one fresh file under `/dev/shm` per handoff (no memory is shared between the
//! guests before a handoff is directed) and hands its path to both QEMUs (`memory-backend-file`,
//! `share=on`). The file's memory is reserved when it is created (`posix_fallocate`, not a sparse
//! `ftruncate`), before anything is sent to the owner (issue 9, item 5): a sparse file in a full
//! tmpfs maps fine and kills the QEMU that first touches a missing page with SIGBUS, after the
//! owner was already redirected. With every page allocated, QEMU (`prealloc` off) only maps them
//! and needs no more room. [`SharedFile`] removes it when dropped, whatever happened. [`RingWatch`] maps it
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
    /// the filesystem under `dir` cannot hold the ring's `size` bytes (`errno`: ENOSPC, EDQUOT,
    /// ENOMEM or EFBIG from `posix_fallocate`); nothing is left behind
    #[error("no room for the {} ring in {}: {errno}", size_text(*size), dir.display())]
    NoRoom {
        /// The directory (a tmpfs such as `/dev/shm`).
        dir: PathBuf,
        /// Bytes wanted.
        size: u64,
        /// The error's symbolic name.
        errno: &'static str,
    },
    /// `--inject shm-full` needs root (a mount namespace and a tmpfs mount)
    #[error(
        "--inject shm-full needs root: it mounts a small tmpfs on {SHM_DIR} in the shim's own mount namespace"
    )]
    NotRoot,
    /// a step of the private /dev/shm failed (`what`: the call)
    #[error("cannot set up a private {SHM_DIR} ({what})")]
    Isolate {
        /// The call that failed.
        what: &'static str,
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

/// A shared-memory file owned by the shim: created zero-filled with all its memory reserved, and
/// removed when dropped.
#[derive(Debug)]
pub struct SharedFile {
    path: PathBuf,
    size: u64,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl SharedFile {
    /// Creates `<dir>/baton-<pid>-<nanos>-<n>` (a name nobody else uses) of `size` bytes, mode 0600,
    /// every byte of it allocated (`posix_fallocate`), so that mapping it later cannot fail for
    /// want of memory. No room → [`ShmError::NoRoom`], and no file is left.
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
        reserve(&file, size).map_err(|e| match e.raw_os_error().and_then(no_room_name) {
            Some(errno) => ShmError::NoRoom {
                dir: dir.to_path_buf(),
                size,
                errno,
            },
            None => err(e),
        })?;
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

/// Allocates bytes `0..size` of `file` (and extends it to `size`): `posix_fallocate`, retried
/// while a signal interrupts it (tmpfs then undoes the partial allocation).
fn reserve(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let len =
        libc::off_t::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    for _ in 0..RESERVE_TRIES {
        // SAFETY: `file` is an open, writable descriptor owned by the caller for the duration of
        // the call; posix_fallocate only changes the file, no memory of this process.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            code => return Err(std::io::Error::from_raw_os_error(code)),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EINTR))
}

/// How often [`reserve`] retries an interrupted allocation.
const RESERVE_TRIES: u32 = 100;

/// The symbolic name of an error that means the filesystem has no room for the file.
fn no_room_name(code: i32) -> Option<&'static str> {
    match code {
        libc::ENOSPC => Some("ENOSPC"),
        libc::EDQUOT => Some("EDQUOT"),
        libc::ENOMEM => Some("ENOMEM"),
        libc::EFBIG => Some("EFBIG"),
        _ => None,
    }
}

/// `size` bytes for people: `4 MiB`, `8 KiB`, or `1000 bytes` (whole units only).
pub fn size_text(size: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KiB", size / KIB)
    } else {
        format!("{size} bytes")
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

/// Gives this process a /dev/shm of its own, `bytes` large (`--inject shm-full`, a test hook;
/// issue 9, item 7): a new mount namespace (`unshare(CLONE_NEWNS)`), every mount in it made
/// private recursively (`mount --make-rprivate /`, so nothing mounted here reaches the host), then
/// a tmpfs of `size=bytes` mounted on [`SHM_DIR`]. QEMUs started afterwards inherit the namespace;
/// the machine's real /dev/shm is never touched, and the namespace goes with the last process in
/// it. Call it before any thread is started: `unshare(CLONE_NEWNS)` fails (EINVAL) in a process
/// whose file-system attributes are shared with another thread. Needs root
/// ([`ShmError::NotRoot`]).
pub fn isolate_dev_shm(bytes: u64) -> Result<(), ShmError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ShmError::NotRoot);
    }
    let fail = |what| ShmError::Isolate {
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: unshare only changes this process's namespaces; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(fail("unshare(CLONE_NEWNS)"));
    }
    let root = c"/";
    let none = c"none";
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; `data` is null.
    let r = unsafe {
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(fail("mount --make-rprivate /"));
    }
    let target = c"/dev/shm";
    let fstype = c"tmpfs";
    let data = std::ffi::CString::new(format!("size={bytes},mode=1777")).map_err(|e| {
        ShmError::Isolate {
            what: "tmpfs options",
            source: std::io::Error::other(e),
        }
    })?;
    // SAFETY: as above; `data` is a NUL-terminated option string tmpfs parses.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(fail("mount -t tmpfs on /dev/shm"));
    }
    Ok(())
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

    #[test]
    fn the_memory_is_reserved_not_sparse() {
        use std::os::unix::fs::MetadataExt;
        // /dev/shm is the tmpfs the ring lives in; fall back to a temporary directory elsewhere.
        let tmp = tempfile::tempdir().unwrap();
        let dir = if Path::new(SHM_DIR).is_dir() {
            Path::new(SHM_DIR)
        } else {
            tmp.path()
        };
        let size = 1 << 20;
        let f = SharedFile::create(dir, size).unwrap();
        let meta = std::fs::metadata(f.path()).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 >= size,
            "{} of {size} bytes allocated",
            meta.blocks() * 512
        );
        let empty = SharedFile::create(tmp.path(), 0).unwrap();
        assert_eq!(std::fs::metadata(empty.path()).unwrap().len(), 0);
    }

    #[test]
    fn no_room_names_the_place_the_size_and_the_cause() {
        let e = ShmError::NoRoom {
            dir: PathBuf::from(SHM_DIR),
            size: 4 << 20,
            errno: "ENOSPC",
        };
        assert_eq!(
            e.to_string(),
            "no room for the 4 MiB ring in /dev/shm: ENOSPC"
        );
        assert_eq!(no_room_name(libc::ENOSPC), Some("ENOSPC"));
        assert_eq!(no_room_name(libc::EDQUOT), Some("EDQUOT"));
        assert_eq!(no_room_name(libc::EBADF), None);
        assert_eq!(size_text(8192), "8 KiB");
        assert_eq!(size_text(1000), "1000 bytes");
        assert_eq!(size_text(3 << 20), "3 MiB");
        assert_eq!(size_text((1 << 20) + 1024), "1025 KiB");
    }

    #[test]
    fn a_failed_reservation_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than any filesystem allows (off_t's range): refused before any allocation.
        let e = SharedFile::create(dir.path(), u64::MAX).unwrap_err();
        assert!(matches!(e, ShmError::NoRoom { errno: "EFBIG", .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
