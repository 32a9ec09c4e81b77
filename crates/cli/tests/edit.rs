//! `openclaw-egress allow` and `remove`: exact file contents, refusals,
//! atomic replacement (owner, mode, symlinks, no temp files left), and
//! `--apply` loading the table in a network namespace.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{require_root, Netns, Run, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_openclaw-egress");

/// A temp folder with `egressd.toml` naming `allowlist.conf` next to it.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new(tag: &str) -> Env {
        let env = Env {
            dir: TempDir::new(&format!("edit-{tag}")),
        };
        env.config("");
        env
    }

    /// Writes egressd.toml: the allowlist line, then `extra`.
    fn config(&self, extra: &str) {
        self.dir.write(
            "egressd.toml",
            &format!("allowlist = \"allowlist.conf\"\n{extra}"),
        );
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("egressd.toml")
    }

    fn list_path(&self) -> PathBuf {
        self.dir.join("allowlist.conf")
    }

    fn write_list(&self, bytes: &[u8]) {
        std::fs::write(self.list_path(), bytes).unwrap();
    }

    fn read_list(&self) -> Vec<u8> {
        std::fs::read(self.list_path()).unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(self.config_path()).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    /// Runs `args`, expects `code`, and checks that the file is still
    /// exactly `before` and was not replaced (same inode: a rewrite with
    /// identical bytes would still wake the daemon's watcher).
    #[track_caller]
    fn expect_untouched(&self, args: &[&str], code: i32, before: &[u8]) -> Run {
        let ino = std::fs::metadata(self.list_path()).unwrap().ino();
        let run = self.run(args);
        run.expect_code(code);
        assert_eq!(
            String::from_utf8_lossy(&self.read_list()),
            String::from_utf8_lossy(before),
            "file changed:\n{run}"
        );
        assert_eq!(
            std::fs::metadata(self.list_path()).unwrap().ino(),
            ino,
            "file was replaced:\n{run}"
        );
        run
    }
}

/// Names in `dir` that look like a leftover temp file of an edit.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[track_caller]
fn no_temp_files(dir: &Path) {
    let left = temp_files(dir);
    assert!(
        left.is_empty(),
        "temp files left in {}: {left:?}",
        dir.display()
    );
}

#[track_caller]
fn assert_text(actual: &[u8], expected: &str) {
    assert_eq!(String::from_utf8_lossy(actual), expected);
}

#[test]
fn allow_appends_one_line_and_keeps_every_other_byte() {
    let env = Env::new("lf");
    let before = "\u{FEFF}# agents may reach these\n\n  example.com:443   # docs\n\t\n# end\n";
    env.write_list(before.as_bytes());
    env.run(&["allow", "Api.Example.ORG:8443"])
        .expect_code(0)
        .stdout_has("added api.example.org:8443 to ");
    assert_text(&env.read_list(), &format!("{before}api.example.org:8443\n"));
    no_temp_files(env.dir.path());
}

#[test]
fn allow_uses_the_files_crlf_line_ending() {
    let env = Env::new("crlf");
    let before = "# hi\r\nexample.com:443\r\n\r\n";
    env.write_list(before.as_bytes());
    env.run(&["allow", "198.18.0.0/15"]).expect_code(0);
    assert_text(&env.read_list(), &format!("{before}198.18.0.0/15\r\n"));
}

#[test]
fn allow_after_a_last_line_without_newline_ends_that_line_first() {
    let env = Env::new("nonl");
    env.write_list(b"# a\r\nexample.com:443\r\nfoo.org");
    env.run(&["allow", "bar.org"]).expect_code(0);
    assert_text(
        &env.read_list(),
        "# a\r\nexample.com:443\r\nfoo.org\r\nbar.org\r\n",
    );

    let env = Env::new("nonl-lf");
    env.write_list(b"foo.org");
    env.run(&["allow", "bar.org"]).expect_code(0);
    assert_text(&env.read_list(), "foo.org\nbar.org\n");
}

#[test]
fn allow_of_a_listed_entry_is_a_no_op() {
    let env = Env::new("twice");
    env.write_list(b"# x\nfoo.org\n");
    env.run(&["allow", "bar.org:443"]).expect_code(0);
    let after_first = env.read_list();
    assert_text(&after_first, "# x\nfoo.org\nbar.org:443\n");
    // Spelled differently, same meaning: still a duplicate.
    env.expect_untouched(&["allow", "BAR.org.:443"], 0, &after_first)
        .stdout_has("already allowed: bar.org:443 (line 3)");
    no_temp_files(env.dir.path());
}

#[test]
fn allow_with_a_comment_writes_it_after_two_spaces() {
    let env = Env::new("comment");
    env.write_list(b"foo.org\n");
    env.run(&["allow", "bar.org", "--comment", "ticket 42 # why"])
        .expect_code(0);
    assert_text(&env.read_list(), "foo.org\nbar.org  # ticket 42 # why\n");
    // The comment does not change what the line means.
    env.run(&["check"]).expect_code(0).stdout_has("2 entries");
}

#[test]
fn a_comment_with_a_line_break_or_control_character_is_refused() {
    let env = Env::new("badcomment");
    let before = b"foo.org\n";
    env.write_list(before);
    for bad in [
        "two\nlines",
        "carriage\rreturn",
        "bell\u{7}",
        "esc\u{1b}[31m",
    ] {
        env.expect_untouched(&["allow", "bar.org", "--comment", bad], 1, before)
            .stderr_has("invalid --comment");
        // Also when the entry is already listed: the command was wrong.
        env.expect_untouched(&["allow", "foo.org", "--comment", bad], 1, before)
            .stderr_has("invalid --comment");
    }
    no_temp_files(env.dir.path());
}

#[test]
fn an_invalid_entry_is_refused_by_name() {
    let env = Env::new("badentry");
    let before = b"foo.org\n";
    env.write_list(before);
    for (cmd, bad) in [
        ("allow", "no spaces.org"),
        ("allow", "*.wild.org"),
        ("allow", "foo.org:99999"),
        ("allow", "foo.org # c"),
        ("remove", "foo.org:0"),
    ] {
        env.expect_untouched(&[cmd, bad], 1, before)
            .stderr_has(&format!("invalid entry `{bad}`"));
    }
}

#[test]
fn remove_drops_every_line_of_the_entry_and_keeps_the_rest() {
    let env = Env::new("remove");
    let before = "# head\r\nfoo.org:443  # one\r\n\r\nbar.org\r\nFOO.org:443\r\n# tail";
    env.write_list(before.as_bytes());
    env.run(&["remove", "foo.org:443"])
        .expect_code(0)
        .stdout_has("removed foo.org:443 from ")
        .stdout_has("(2 lines)");
    assert_text(&env.read_list(), "# head\r\n\r\nbar.org\r\n# tail");
    env.run(&["remove", "bar.org"])
        .expect_code(0)
        .stdout_has("(1 line)");
    assert_text(&env.read_list(), "# head\r\n\r\n# tail");
    no_temp_files(env.dir.path());
}

#[test]
fn remove_of_an_absent_entry_fails_and_writes_nothing() {
    let env = Env::new("absent");
    let before = b"foo.org:443\n# bar.org\n";
    env.write_list(before);
    // Neither a different port nor a commented-out line counts.
    for absent in ["foo.org", "bar.org"] {
        env.expect_untouched(&["remove", absent], 1, before)
            .stderr_has(&format!("not in the allowlist: {absent}"));
    }
}

#[test]
fn an_edit_keeps_the_files_mode_and_owner() {
    require_root();
    let env = Env::new("owner");
    env.write_list(b"foo.org\n");
    let path = env.list_path();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();

    env.run(&["allow", "bar.org"]).expect_code(0);
    // Checked after one edit only: the freed inode may be reused later.
    let ino_after = std::fs::metadata(&path).unwrap().ino();
    assert_ne!(ino_after, ino, "the file was not replaced by a rename");
    env.run(&["remove", "foo.org"]).expect_code(0);

    let meta = std::fs::metadata(&path).unwrap();
    assert_text(&env.read_list(), "bar.org\n");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    no_temp_files(env.dir.path());
}

#[test]
fn allow_creates_a_missing_allowlist_with_mode_0644() {
    let env = Env::new("create");
    // remove needs an existing file.
    let run = env.run(&["remove", "foo.org"]);
    run.expect_code(1).stderr_has("cannot read allowlist");
    assert!(!env.list_path().exists());
    // A restrictive umask must not leak into the mode.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$@\"")
        .arg("sh")
        .arg(BIN)
        .arg("--config")
        .arg(env.config_path())
        .args(["allow", "foo.org:443"])
        .output()
        .unwrap();
    Run::from(out).expect_code(0);
    assert_text(&env.read_list(), "foo.org:443\n");
    let meta = std::fs::symlink_metadata(env.list_path()).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o7777, 0o644);
    no_temp_files(env.dir.path());
}

#[test]
fn a_symlinked_allowlist_stays_a_symlink_and_its_target_is_edited() {
    let env = Env::new("symlink");
    let real_dir = env.dir.join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("list.conf");
    std::fs::write(&real, "foo.org\n").unwrap();
    // Two hops: allowlist.conf -> link2 -> real/list.conf (relative links).
    std::os::unix::fs::symlink("real/list.conf", env.dir.join("link2")).unwrap();
    std::os::unix::fs::symlink("link2", env.list_path()).unwrap();

    env.run(&["allow", "bar.org"]).expect_code(0);
    env.run(&["remove", "foo.org"]).expect_code(0);

    for link in [env.list_path(), env.dir.join("link2")] {
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{} is no longer a symlink",
            link.display()
        );
    }
    assert_eq!(
        std::fs::read_link(env.list_path()).unwrap(),
        Path::new("link2")
    );
    assert_text(&std::fs::read(&real).unwrap(), "bar.org\n");
    no_temp_files(env.dir.path());
    no_temp_files(&real_dir);
}

#[test]
fn a_dangling_symlink_is_not_replaced() {
    let env = Env::new("dangling");
    std::os::unix::fs::symlink("missing/list.conf", env.list_path()).unwrap();
    env.run(&["allow", "bar.org"])
        .expect_code(1)
        .stderr_has("cannot resolve allowlist");
    assert_eq!(
        std::fs::read_link(env.list_path()).unwrap(),
        Path::new("missing/list.conf")
    );
    no_temp_files(env.dir.path());
}

#[test]
fn an_invalid_allowlist_is_refused_with_its_locations() {
    let env = Env::new("invalid");
    let before = b"foo.org\nbad host.org\n\n*.wild.org:443\n";
    env.write_list(before);
    let shown = env.list_path().display().to_string();
    for args in [&["allow", "bar.org"][..], &["remove", "foo.org"][..]] {
        env.expect_untouched(args, 1, before)
            .stderr_has(&format!("{shown}:2:5: "))
            .stderr_has(&format!("{shown}:4:1: "));
    }
    // Invalid UTF-8 too.
    let before = b"foo.org\nb\xffr.org\n";
    env.write_list(before);
    env.expect_untouched(&["allow", "bar.org"], 1, before)
        .stderr_has(&format!("{shown}:2:2: invalid UTF-8"));
    no_temp_files(env.dir.path());
}

#[test]
fn a_failed_write_leaves_the_original_and_no_temp_file() {
    require_root();
    // As `nobody`, in a folder it may write to, on a file owned by root:
    // the temp file can be created but not given root's ownership, so the
    // edit must fail after creating it.
    let env = Env::new("eperm");
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = b"foo.org\n";
    env.write_list(before);
    std::fs::set_permissions(env.list_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let ino = std::fs::metadata(env.list_path()).unwrap().ino();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(BIN)
        .arg("--config")
        .arg(env.config_path())
        .args(["allow", "bar.org"])
        .output()
        .unwrap();
    Run::from(out)
        .expect_code(1)
        .stderr_has("cannot write allowlist")
        .stderr_has("owner 0:0");
    assert_text(&env.read_list(), "foo.org\n");
    assert_eq!(std::fs::metadata(env.list_path()).unwrap().ino(), ino);
    no_temp_files(env.dir.path());
}

#[test]
fn allow_and_remove_with_apply_load_the_table() {
    require_root();
    let ns = Netns::new("edit-apply");
    let env = Env::new("apply");
    let table = format!("oc_edit_{}", std::process::id());
    env.config(&format!(
        "[network]\ninterface = \"oc-edit0\"\n\
         [resolver]\nservers = [\"127.0.0.1:53\"]\ntimeout = \"1s\"\nattempts = 1\n\
         [dns]\nallow = []\n\
         [firewall]\ntable = \"{table}\"\n"
    ));
    env.write_list(b"198.18.1.10:443\n");
    let run_in_ns = |args: &[&str]| {
        let config = env.config_path();
        let mut all = vec![BIN, "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        Run::from(ns.exec(all))
    };
    let listing = || ns.exec_ok(["nft", "list", "table", "inet", &table]);
    let exists = || ns.nft_table(&table).is_some();
    assert!(!exists(), "table present before any apply");

    run_in_ns(&["allow", "198.18.1.20:8443", "--apply"])
        .expect_code(0)
        .stdout_has("added 198.18.1.20:8443")
        .stdout_has(&format!("table inet {table}: "));
    let l = listing();
    assert!(l.contains("198.18.1.20"), "new element missing:\n{l}");
    assert!(l.contains("8443"), "new port missing:\n{l}");
    assert!(l.contains("198.18.1.10"), "old element missing:\n{l}");

    run_in_ns(&["remove", "198.18.1.10:443", "--apply"])
        .expect_code(0)
        .stdout_has("removed 198.18.1.10:443");
    let l = listing();
    assert!(
        !l.contains("198.18.1.10"),
        "removed element still loaded:\n{l}"
    );
    assert!(l.contains("198.18.1.20"), "kept element missing:\n{l}");

    // Without --apply, only the file changes.
    run_in_ns(&["allow", "198.18.1.30"]).expect_code(0);
    assert!(!listing().contains("198.18.1.30"));
    assert_text(&env.read_list(), "198.18.1.20:8443\n198.18.1.30\n");
}
