//! The spool's file operations behind one small trait, so a test double can decide what a
//! power cut keeps.
//!
//! The shard never touches the file system directly: it creates and preallocates segment
//! files, writes at offsets, `fdatasync`s, fsyncs directories, removes files and maps segments
//! for reading, all through [`Storage`] and [`SegmentFile`]. [`DiskStorage`] is production:
//! glommio `BufferedFile` over io_uring for the data path, blocking calls for the rare
//! directory operations. The futures are boxed: there is one write per segment and one sync per
//! commit round, so the allocation is noise next to the I/O. Nothing here is `Send`.
use crate::error::Result;
use crate::segment::SegmentMap;
use glommio::io::{BufferedFile, OpenOptions};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;

/// A boxed, core-local I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// One open segment file, written by its owning core only.
pub trait SegmentFile {
    /// Write all of `buf` at `pos`. A short write is an error (ENOSPC).
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, ()>;
    /// Make every completed write durable (data, and the metadata needed to read it back).
    fn fdatasync(&self) -> IoFuture<'_, ()>;
    /// Map the whole file read-only.
    fn map(&self, seq: u32, path: &Path) -> Result<SegmentMap>;
}

/// The file-system operations of one core's spool.
pub trait Storage {
    /// Create `path` (it must not exist) and preallocate `size` bytes.
    fn create_file<'a>(&'a self, path: &'a Path, size: u64) -> IoFuture<'a, Rc<dyn SegmentFile>>;
    /// Create one directory level; an existing directory is not an error.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Make the entries of directory `path` durable (created and removed names).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// [`Self::sync_dir`] without holding up the executor: the committer uses it after each
    /// new segment, while sessions on the same core go on. By default the blocking call.
    fn sync_dir_async<'a>(&'a self, path: &'a Path) -> IoFuture<'a, ()> {
        Box::pin(async move { self.sync_dir(path) })
    }
    /// Remove a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// Production storage: glommio buffered files on io_uring.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStorage;

struct DiskFile(BufferedFile);

impl SegmentFile for DiskFile {
    fn write_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            // The buffer moves into the kernel's hands (no copy); a short write into a
            // preallocated segment only happens when the device is out of space.
            let len = buf.len();
            let n = self.0.write_at(buf, pos).await.map_err(io::Error::from)?;
            if n == len {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        })
    }

    fn fdatasync(&self) -> IoFuture<'_, ()> {
        Box::pin(async move { self.0.fdatasync().await.map_err(io::Error::from) })
    }

    fn map(&self, seq: u32, path: &Path) -> Result<SegmentMap> {
        SegmentMap::map(seq, path.to_path_buf(), &self.0)
    }
}

impl Storage for DiskStorage {
    fn create_file<'a>(&'a self, path: &'a Path, size: u64) -> IoFuture<'a, Rc<dyn SegmentFile>> {
        Box::pin(async move {
            let file = OpenOptions::new().read(true).write(true).create_new(true).buffered_open(path).await?;
            file.pre_allocate(size, false).await?;
            Ok(Rc::new(DiskFile(file)) as Rc<dyn SegmentFile>)
        })
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn sync_dir_async<'a>(&'a self, path: &'a Path) -> IoFuture<'a, ()> {
        // Through io_uring: a directory fsync waits for a journal commit, which on a busy disk
        // takes long enough to freeze every session of the core if done in place.
        Box::pin(async move {
            let dir = glommio::io::Directory::open(path).await.map_err(io::Error::from)?;
            dir.sync().await.map_err(io::Error::from)?;
            dir.close().await.map_err(io::Error::from)
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// Create `dir` and any missing ancestors so that each new name survives a power cut: every
/// directory created is followed by an fsync of its parent. The parents of `dir` and of its
/// parent are fsynced even when nothing was created here, because another step (recovery's
/// scan) may have created them without doing so.
pub fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
        at = p.parent();
    }
    for p in missing.iter().rev() {
        storage.create_dir(p)?;
        if let Some(parent) = p.parent().filter(|q| !q.as_os_str().is_empty()) {
            storage.sync_dir(parent)?;
        }
    }
    for p in [dir.parent(), dir.parent().and_then(Path::parent)].into_iter().flatten() {
        if !p.as_os_str().is_empty() {
            storage.sync_dir(p)?;
        }
    }
    Ok(())
}
