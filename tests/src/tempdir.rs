//! A temporary folder removed on drop.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::lock::is_stale;
use crate::netns::unique_name;

/// A fresh folder under the system temp dir (`oct-PID-N-TAG`), mode 0755 so
/// that daemons that drop privileges (dnsmasq runs as `nobody`) can read
/// what tests write into it. Removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the folder.
    pub fn new(tag: &str) -> TempDir {
        TempDir::create(&std::env::temp_dir(), tag)
    }

    /// Like [`TempDir::new`], in `base` rather than the temp dir (for a
    /// folder a `PrivateTmp=` sandbox must still see, say). Folders of the
    /// kit's form in `base` whose owner process is gone (left by killed
    /// runs) are removed first.
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        if let Ok(dir) = std::fs::read_dir(base) {
            for e in dir.flatten() {
                if is_stale(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        TempDir::create(base, tag)
    }

    fn create(base: &Path, tag: &str) -> TempDir {
        let path = base.join(unique_name(tag));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `path()/name` (mode 0644; `name` may lead into a
    /// subfolder) atomically (write to a temporary name beside it, then
    /// rename), and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let target = self.join(name);
        let file = target.file_name().expect("a file name").to_string_lossy();
        let tmp = target.with_file_name(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::rename(&tmp, &target)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", target.display()));
        target
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
