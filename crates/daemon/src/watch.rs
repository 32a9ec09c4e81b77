//! Watches the config and the allowlist for changes.
//!
//! Editors save in many ways: write in place (truncate + write), write a
//! temp file and rename it over the original, or swap a symlink. Watching the
//! files themselves misses renames (the watch follows the old inode), so the
//! folders are watched and events are filtered by file name. When a path is
//! a symlink, the folder of its target is watched too, so edits of the target
//! are seen. Debouncing happens in the engine, which owns time.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A file-system watcher for a set of files. Dropping it stops watching.
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

/// The folders to watch for `files`, and the file names that matter.
fn targets(files: &[PathBuf]) -> (BTreeSet<PathBuf>, BTreeSet<OsString>) {
    let mut dirs = BTreeSet::new();
    let mut names = BTreeSet::new();
    for f in files {
        let mut add = |p: &Path| {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            dirs.insert(dir);
            if let Some(n) = p.file_name() {
                names.insert(n.to_os_string());
            }
        };
        add(f);
        if let Ok(real) = std::fs::canonicalize(f) {
            if real != *f {
                add(&real);
            }
        }
    }
    (dirs, names)
}

impl FileWatcher {
    /// Starts watching; every relevant event sends `()` on `tx`.
    pub fn new(files: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> notify::Result<FileWatcher> {
        let (dirs, names) = targets(files);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            match res {
                Ok(ev) => {
                    // Reading the files (ours included) produces access
                    // events; only changes matter, or every reload would
                    // trigger the next one.
                    if matches!(ev.kind, EventKind::Access(_)) {
                        return;
                    }
                    let relevant = ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
                    if relevant {
                        let _ = tx.send(());
                    }
                }
                // Lost events (queue overflow): re-read to be safe.
                Err(_) => {
                    let _ = tx.send(());
                }
            }
        })?;
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(FileWatcher {
            _watcher: watcher,
            dirs,
        })
    }

    /// True when watching `files` needs other folders than now (a path or
    /// a symlink target changed), so the watcher must be rebuilt.
    pub fn needs_rebuild(&self, files: &[PathBuf]) -> bool {
        targets(files).0 != self.dirs
    }
}
