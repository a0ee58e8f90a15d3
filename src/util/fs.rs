//! File-system helpers: durability (folder fsync) and opening a file an operator named.

use std::path::Path;

/// Opens `path` for reading (following links) without blocking and checks that what was opened is
/// a regular file: a FIFO, socket, device or folder put where a configuration, certificate or
/// model file belongs is an error naming what it is, never a read that waits for a writer.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a folder, FIFO, socket or device)",
        ));
    }
    Ok(file)
}

/// fsyncs a folder so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Helpers for tests elsewhere in the crate.
#[cfg(test)]
pub mod test_support {
    use std::path::Path;

    /// Makes a FIFO at `path`: what a test puts where a file an operator names belongs (opening
    /// it for reading would wait for a writer).
    pub fn make_fifo(path: &Path) {
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        test_support::make_fifo(&fifo);
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(open_regular(dir.path()).is_err());
        assert!(open_regular(Path::new("/dev/null")).is_err());
        assert_eq!(
            open_regular(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
        let good = dir.path().join("good");
        std::fs::write(&good, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_regular(&link).unwrap(), &mut text).unwrap();
        assert_eq!(text, "x");
    }
}
