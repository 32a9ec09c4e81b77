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
    targets: (BTreeSet<PathBuf>, BTreeSet<OsString>),
}

/// Every path met while resolving `path`: the path itself, each symlink on
/// the way (a file symlink, or a folder symlink such as Kubernetes'
/// `..data` in `allowlist.conf -> ..data/allowlist.conf`), and the final
/// target. An atomic swap renames a new link over one of these, so an event
/// on any of their names means the file may have changed.
fn chain(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut cur = match std::path::absolute(path) {
        Ok(p) => p,
        Err(_) => return out,
    };
    // Bounded like the kernel's own symlink limit, so a loop cannot hang us.
    for _ in 0..40 {
        let mut prefix = PathBuf::new();
        let mut next = None;
        let comps: Vec<_> = cur.components().collect();
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            let is_link = std::fs::symlink_metadata(&prefix)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if is_link {
                let Ok(target) = std::fs::read_link(&prefix) else {
                    break;
                };
                out.push(prefix.clone());
                let base = prefix.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut resolved = base.join(target);
                for rest in &comps[i + 1..] {
                    resolved.push(rest);
                }
                next = Some(resolved);
                break;
            }
        }
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    out.push(cur);
    out
}

/// The folders to watch for `files`, and the file names that matter.
fn targets(files: &[PathBuf]) -> (BTreeSet<PathBuf>, BTreeSet<OsString>) {
    let mut dirs = BTreeSet::new();
    let mut names = BTreeSet::new();
    for f in files {
        for p in chain(f) {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            dirs.insert(dir);
            if let Some(n) = p.file_name() {
                names.insert(n.to_os_string());
            }
        }
    }
    (dirs, names)
}

impl FileWatcher {
    /// Starts watching; every relevant event sends `()` on `tx`.
    pub fn new(files: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> notify::Result<FileWatcher> {
        let (dirs, names) = targets(files);
        let kept = (dirs.clone(), names.clone());
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
            targets: kept,
        })
    }

    /// True when watching `files` needs other folders than now (a path or
    /// a symlink target changed), so the watcher must be rebuilt.
    pub fn needs_rebuild(&self, files: &[PathBuf]) -> bool {
        targets(files) != self.targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_configmap_layout_watches_every_link_on_the_way() {
        let dir = std::env::temp_dir().join(format!("oce-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::write(dir.join("..v1/allowlist.conf"), "x\n").unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/allowlist.conf", dir.join("allowlist.conf")).unwrap();
        let (dirs, names) = targets(&[dir.join("allowlist.conf")]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(dirs.contains(&dir), "{dirs:?}");
        assert!(dirs.contains(&dir.join("..v1")), "{dirs:?}");
        for n in ["allowlist.conf", "..data"] {
            assert!(names.contains(&OsString::from(n)), "{n} in {names:?}");
        }
    }

    #[test]
    fn a_plain_file_watches_its_folder_only() {
        let (dirs, names) = targets(&[PathBuf::from("/etc/openclaw-egress/egressd.toml")]);
        assert_eq!(
            dirs,
            BTreeSet::from([PathBuf::from("/etc/openclaw-egress")])
        );
        assert_eq!(names, BTreeSet::from([OsString::from("egressd.toml")]));
    }
}
