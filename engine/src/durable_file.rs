//! Replacing a small state file durably (warm-up allowances, the suppression journal's
//! compaction, suspensions and throttles): the new contents go to `<name>.tmp` beside it, are
//! fsynced, renamed over the old file, and the directory is fsynced, so after a crash the file
//! is either wholly the old one or wholly the new one, never a mix or nothing.
//!
//! Blocking I/O: call it before the cores serve, or on glommio's blocking pool
//! (`glommio::executor().spawn_blocking`), never on a core.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary file a replacement of `path` is written to.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replace `path` with what `fill` writes, durably. On any error the old file is left as it
/// was and the temporary file is removed.
pub fn replace(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes`, durably.
pub fn replace_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        replace_bytes(&path, b"one\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
        replace_bytes(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        let failed = replace(&path, |w| {
            w.write_all(b"half of thr")?;
            Err(std::io::Error::other("disk full"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n", "a failed write leaves the old file");
        assert!(!tmp_path(&path).exists(), "and no temporary file");
        assert_eq!(tmp_path(&path), dir.path().join("state.tmp"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state"]);
    }
}
