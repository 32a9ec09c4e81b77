//! Making `/etc/pf.conf` evaluate the anchor.
//!
//! pf only runs an anchor's rules where the main ruleset has an `anchor`
//! rule naming it. The rule is added to pf.conf (not only to the running
//! ruleset) so that it survives the next `pfctl -f /etc/pf.conf`, which
//! macOS and other software run. Only `anchor "NAME"` is added, no
//! `load anchor ... from FILE`: the daemon loads the anchor's rules itself
//! (at start and after every change), a rules file would go stale between
//! runs, and a `load anchor` whose file is missing makes the whole of
//! pf.conf fail to load. An anchor that is referenced but empty passes
//! everything, exactly as if it were not there.
//!
//! The line is appended at the end: filter rules come last in pf.conf's
//! required order (options, normalisation, queueing, translation,
//! filtering), so this place is always valid.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::PfError;

/// What [`ensure_anchor`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PfConfChange {
    /// The file already had the anchor rule; nothing was written.
    Present,
    /// The anchor rule was appended.
    Added {
        /// The file written (symlinks resolved).
        path: PathBuf,
        /// The copy of the file as it was before.
        backup: PathBuf,
    },
}

/// Where the backup of `real` goes: beside it, `pf.conf.openclaw-egress.bak`.
/// It is rewritten at each edit, so it always holds the file as it was
/// right before the last change this program made.
pub fn backup_path(real: &Path) -> PathBuf {
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pf.conf".into());
    real.with_file_name(format!("{name}.openclaw-egress.bak"))
}

/// The lines appended for `anchor`.
pub fn anchor_block(anchor: &str) -> String {
    format!(
        "\n# openclaw-egress: run the rules openclaw-egressd keeps in this anchor\n\
         # (see `pfctl -a {anchor} -s rules`); added by openclaw-egressd.\n\
         anchor \"{anchor}\"\n"
    )
}

/// True when pf.conf text has an `anchor` rule for exactly `anchor`
/// (quoted or not, with or without further words such as `all`), outside
/// comments and with continuation lines joined.
pub fn references_anchor(text: &str, anchor: &str) -> bool {
    referenced_anchors(text).iter().any(|a| a == anchor)
}

/// The names of every `anchor` rule in pf.conf text, in order.
pub fn referenced_anchors(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|line| {
            let mut words = strip_comment(line).split_whitespace();
            match (words.next(), words.next()) {
                (Some("anchor"), Some(name)) => Some(unquote(name).to_owned()),
                _ => None,
            }
        })
        .collect()
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(word: &str) -> &str {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
}

fn file_err(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PfError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| PfError::File { path, what, source }
}

/// Adds the anchor rule to the pf.conf at `path` unless it is there:
/// backup first, then an atomic replace keeping the file's mode and owner.
/// Idempotent.
pub fn ensure_anchor(path: &Path, anchor: &str) -> Result<PfConfChange, PfError> {
    // /etc is a symlink to /private/etc on macOS, and pf.conf itself may be
    // one: the file written is the target, so the link stays a link.
    let real = fs::canonicalize(path).map_err(file_err(path, "resolve the path"))?;
    let text = fs::read_to_string(&real).map_err(file_err(&real, "read"))?;
    if references_anchor(&text, anchor) {
        return Ok(PfConfChange::Present);
    }
    let backup = backup_path(&real);
    fs::copy(&real, &backup).map_err(file_err(
        &real,
        format!("copy it to the backup {}", backup.display()),
    ))?;
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&anchor_block(anchor));
    write_atomic(&real, new.as_bytes())?;
    Ok(PfConfChange::Added { path: real, backup })
}

/// Puts the backup of an edit back in place (after pfctl refused the
/// edited file).
pub fn restore(change: &PfConfChange) -> Result<(), PfError> {
    if let PfConfChange::Added { path, backup } = change {
        let old = fs::read(backup).map_err(file_err(backup, "read the backup"))?;
        write_atomic(path, &old)?;
    }
    Ok(())
}

/// Writes `contents` to a temporary file beside `path` with `path`'s mode
/// and owner, syncs it, renames it over `path` and syncs the folder, so a
/// crash leaves either the old or the new file, never a torn one.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), PfError> {
    let meta = fs::metadata(path).map_err(file_err(path, "stat"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.openclaw-egress.tmp"));
    // A leftover of a crash would make create_new fail.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(&tmp)
        .map_err(file_err(&tmp, "create"))?;
    let result = (|| {
        f.write_all(contents).map_err(file_err(&tmp, "write"))?;
        // The umask may have narrowed the mode given at creation.
        fs::set_permissions(&tmp, meta.permissions()).map_err(file_err(&tmp, "chmod"))?;
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
            .map_err(file_err(&tmp, "chown"))?;
        f.sync_all().map_err(file_err(&tmp, "fsync"))?;
        fs::rename(&tmp, path).map_err(file_err(path, "replace"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err(dir, "fsync the folder"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TempDir, APPLE_PF_CONF};
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_line_is_added_once_after_a_backup_keeping_the_mode() {
        let dir = TempDir::new("pfconf-add");
        let conf = dir.write("pf.conf", APPLE_PF_CONF);
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o640)).unwrap();

        let change = ensure_anchor(&conf, "openclaw-egress").unwrap();
        let real = fs::canonicalize(&conf).unwrap();
        assert_eq!(
            change,
            PfConfChange::Added {
                path: real.clone(),
                backup: real.with_file_name("pf.conf.openclaw-egress.bak"),
            }
        );
        let text = fs::read_to_string(&conf).unwrap();
        assert_eq!(
            text,
            format!("{APPLE_PF_CONF}{}", anchor_block("openclaw-egress"))
        );
        assert!(text.ends_with("anchor \"openclaw-egress\"\n"));
        assert_eq!(
            fs::read_to_string(dir.join("pf.conf.openclaw-egress.bak")).unwrap(),
            APPLE_PF_CONF
        );
        assert_eq!(
            fs::metadata(&conf).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(!dir.join(".pf.conf.openclaw-egress.tmp").exists());

        // Second run: nothing written, backup untouched.
        fs::write(dir.join("pf.conf.openclaw-egress.bak"), "marker").unwrap();
        assert_eq!(
            ensure_anchor(&conf, "openclaw-egress").unwrap(),
            PfConfChange::Present
        );
        assert_eq!(fs::read_to_string(&conf).unwrap(), text);
        assert_eq!(
            fs::read_to_string(dir.join("pf.conf.openclaw-egress.bak")).unwrap(),
            "marker"
        );
        assert_eq!(text.matches("anchor \"openclaw-egress\"").count(), 1);
    }

    #[test]
    fn a_missing_final_newline_is_added_before_the_block() {
        let dir = TempDir::new("pfconf-nl");
        let conf = dir.write("pf.conf", "anchor \"com.apple/*\"");
        ensure_anchor(&conf, "oc").unwrap();
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            format!("anchor \"com.apple/*\"\n{}", anchor_block("oc"))
        );
    }

    #[test]
    fn a_symlinked_pf_conf_keeps_its_link_and_the_target_is_edited() {
        let dir = TempDir::new("pfconf-link");
        let target = dir.write("real.conf", APPLE_PF_CONF);
        let link = dir.join("pf.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        ensure_anchor(&link, "openclaw-egress").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(references_anchor(
            &fs::read_to_string(&target).unwrap(),
            "openclaw-egress"
        ));
        assert!(dir.join("real.conf.openclaw-egress.bak").exists());
    }

    #[test]
    fn what_counts_as_a_reference() {
        for yes in [
            "anchor \"openclaw-egress\"\n",
            "  anchor openclaw-egress all\n",
            "anchor \"openclaw-egress\" in on bridge100 # ours\n",
            "anchor \\\n \"openclaw-egress\"\n",
        ] {
            assert!(references_anchor(yes, "openclaw-egress"), "{yes:?}");
        }
        for no in [
            "# anchor \"openclaw-egress\"\n",
            "anchor \"openclaw-egress/*\"\n",
            "load anchor \"openclaw-egress\" from \"/x\"\n",
            "nat-anchor \"openclaw-egress\"\n",
            "anchor \"openclaw-egress-2\"\n",
            "",
        ] {
            assert!(!references_anchor(no, "openclaw-egress"), "{no:?}");
        }
    }

    #[test]
    fn restore_puts_the_backup_back() {
        let dir = TempDir::new("pfconf-restore");
        let conf = dir.write("pf.conf", APPLE_PF_CONF);
        let change = ensure_anchor(&conf, "oc").unwrap();
        restore(&change).unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), APPLE_PF_CONF);
        restore(&PfConfChange::Present).unwrap();
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = TempDir::new("pfconf-missing");
        let err = ensure_anchor(&dir.join("pf.conf"), "oc").unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "{}: cannot resolve the path: ",
                dir.join("pf.conf").display()
            )),
            "{err}"
        );
    }
}
