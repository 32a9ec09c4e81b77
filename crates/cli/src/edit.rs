//! `allow` and `remove`: edit the allowlist file in place.
//!
//! The file is hand-edited too, so an edit keeps every other byte (comments,
//! blank lines, line endings) and replaces the file atomically: a running
//! daemon watches it and must never read a half-written file, and a crash
//! must leave either the old or the new file, never a mix.

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use egress_core::allowlist::{parse_entry, Allowlist, EditError};
use egress_core::Entry;

use crate::load::{self, Invalid};

/// Mode of an allowlist that `allow` creates.
const NEW_FILE_MODE: u32 = 0o644;

/// The allowlist as it is on disk, ready to edit.
struct Current {
    /// The path as the config names it (what messages and diagnostics show).
    shown: String,
    /// Where to write: the final target when the configured path is a
    /// symlink, so the link stays a link.
    target: PathBuf,
    /// Metadata of the existing file, `None` when there is none yet.
    meta: Option<Metadata>,
    allowlist: Allowlist,
}

fn entry_arg(arg: &str) -> Result<Entry> {
    parse_entry(arg).map_err(|why| anyhow!("invalid entry `{arg}`: {why}"))
}

/// Reads and parses the configured allowlist. `create` allows a missing
/// file (it is then empty).
fn read_current(config: Option<&Path>, create: bool) -> Result<Current> {
    let (_, config) = load::load_config(config)?;
    let path = config.allowlist;
    let shown = path.display().to_string();
    let (target, meta, bytes) = match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            // canonicalize follows every link in the chain; a dangling link
            // fails here instead of being replaced by a regular file.
            let target = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot resolve allowlist {shown}"))?;
            let meta = std::fs::metadata(&target)
                .with_context(|| format!("cannot read allowlist {shown}"))?;
            if !meta.is_file() {
                bail!("allowlist {shown} is not a regular file");
            }
            let bytes =
                std::fs::read(&target).with_context(|| format!("cannot read allowlist {shown}"))?;
            (target, Some(meta), bytes)
        }
        Err(e) if e.kind() == ErrorKind::NotFound && create => (path, None, Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read allowlist {shown}")),
    };
    // An invalid file is refused as a whole: editing it would either drop
    // the user's broken lines or write a file the daemon rejects anyway.
    let parsed = Allowlist::parse_bytes(&shown, &bytes).map_err(|d| {
        Invalid(format!(
            "{d}\nopenclaw-egress: {shown} is invalid; fix it before editing it with this command"
        ))
    })?;
    for w in &parsed.warnings {
        eprintln!("{w}");
    }
    Ok(Current {
        shown,
        target,
        meta,
        allowlist: parsed.allowlist,
    })
}

/// `allow ENTRY [--comment TEXT]`. Returns once the entry is in the file
/// (added now, or already there).
pub fn allow(config: Option<&Path>, entry: &str, comment: Option<&str>) -> Result<()> {
    let entry = entry_arg(entry)?;
    let mut cur = read_current(config, true)?;
    // `add` checks the comment before looking for the entry, so a bad
    // comment is refused even when the entry is already present.
    let added = cur.allowlist.add(&entry, comment).map_err(|e| match e {
        EditError::BadComment(why) => {
            anyhow!("invalid --comment {:?}: {why}", comment.unwrap_or_default())
        }
        EditError::Unrepresentable(why) => anyhow!("cannot add `{entry}`: {why}"),
    })?;
    if !added {
        let line = cur
            .allowlist
            .entries()
            .find(|e| *e.entry == entry)
            .map_or(0, |e| e.line);
        println!("already allowed: {entry} (line {line})");
        return Ok(());
    }
    write_atomic(
        &cur.target,
        cur.allowlist.to_text().as_bytes(),
        cur.meta.as_ref(),
    )
    .with_context(|| format!("cannot write allowlist {}", cur.shown))?;
    println!("added {entry} to {}", cur.shown);
    Ok(())
}

/// `remove ENTRY`. Returns `false` (after saying so) when the entry was not
/// in the file; nothing is written then.
pub fn remove(config: Option<&Path>, entry: &str) -> Result<bool> {
    let entry = entry_arg(entry)?;
    let mut cur = read_current(config, false)?;
    let n = cur.allowlist.remove(&entry);
    if n == 0 {
        eprintln!("not in the allowlist: {entry}");
        return Ok(false);
    }
    write_atomic(
        &cur.target,
        cur.allowlist.to_text().as_bytes(),
        cur.meta.as_ref(),
    )
    .with_context(|| format!("cannot write allowlist {}", cur.shown))?;
    let lines = if n == 1 { "line" } else { "lines" };
    println!("removed {entry} from {} ({n} {lines})", cur.shown);
    Ok(true)
}

/// Removes the temp file on drop unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Replaces `target` with `bytes`: temp file in the same folder (rename is
/// only atomic within one filesystem), fsync, same owner and mode as `like`
/// (0644 for a new file), rename, fsync the folder so the rename itself is
/// durable. On error before the rename, `target` is untouched and the temp
/// file is gone.
fn write_atomic(target: &Path, bytes: &[u8], like: Option<&Metadata>) -> Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", target.display()))?;
    let tmp_path = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mode = like.map_or(NEW_FILE_MODE, |m| m.mode() & 0o7777);
    // create_new is O_CREAT|O_EXCL: never follows a planted symlink or
    // reuses someone else's file. The open mode is only a start (umask
    // applies); the exact mode is set below.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp_path)
        .with_context(|| format!("cannot create {}", tmp_path.display()))?;
    let mut guard = TempFile(Some(tmp_path.clone()));
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp_path.display()))?;
    if let Some(m) = like {
        std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid())).with_context(|| {
            format!(
                "cannot give {} the owner {}:{} of the original",
                tmp_path.display(),
                m.uid(),
                m.gid()
            )
        })?;
    }
    // After fchown, which may clear set-id bits.
    file.set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", tmp_path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp_path.display()))?;
    drop(file);
    std::fs::rename(&tmp_path, target).with_context(|| {
        format!(
            "cannot rename {} to {}",
            tmp_path.display(),
            target.display()
        )
    })?;
    guard.0 = None;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync folder {}", dir.display()))?;
    Ok(())
}
