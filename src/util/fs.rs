//! File-system durability helpers.

use std::path::Path;

/// fsyncs a folder so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
