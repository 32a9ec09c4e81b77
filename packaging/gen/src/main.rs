//! Writes the man pages and shell completions of `openclaw-egress` and
//! `openclaw-egressd` from the very clap definitions the binaries parse
//! their command lines with (included below by path, so the two cannot
//! drift apart).
//!
//! ```text
//! openclaw-egress-gen OUT_DIR
//!   OUT_DIR/man/openclaw-egress.1             the command, with EXIT STATUS and FILES
//!   OUT_DIR/man/openclaw-egress-SUB.1         one page per subcommand
//!   OUT_DIR/man/openclaw-egressd.8            the daemon, with SIGNALS and FILES
//!   OUT_DIR/completions/bash/openclaw-egress  (and openclaw-egressd)
//!   OUT_DIR/completions/zsh/_openclaw-egress  (and _openclaw-egressd)
//!   OUT_DIR/completions/fish/openclaw-egress.fish  (and openclaw-egressd.fish)
//! ```
//!
//! `packaging/build-deb.sh` runs it; the Debian package installs the files.

// The generator only reads the definitions; the fields the binaries use are
// never read here.
#[allow(dead_code)]
#[path = "../../../crates/cli/src/args.rs"]
mod cli_args;
#[allow(dead_code)]
#[path = "../../../crates/daemon/src/args.rs"]
mod daemon_args;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

/// The command-line tool's definition, as its man page documents it.
fn cli_command() -> clap::Command {
    // `help SUBCOMMAND` is clap's, not ours: no page and no completion for it.
    let mut cmd = cli_args::Cli::command().disable_help_subcommand(true);
    // Gives the subcommands their display names (`openclaw-egress-check`),
    // which name their pages.
    cmd.build();
    cmd
}

/// The daemon's definition.
fn daemon_command() -> clap::Command {
    let mut cmd = daemon_args::Cli::command();
    cmd.build();
    cmd
}

/// Sections appended to `openclaw-egress(1)`.
const CLI_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
An error: an invalid config or allowlist (every error is printed as PATH:LINE:COL), a
failed netlink request, an unwritable allowlist. For \fBstatus\fR: the daemon answered
but holds a config error (it keeps enforcing the last good policy).
.TP
\fB2\fR
Usage error on the command line.
.TP
\fB3\fR
Applied (or planned), but some hostnames did not resolve: they get no addresses (they
stay closed) and are listed on standard error.
.TP
\fB4\fR
(\fBstatus\fR) The daemon is unreachable.
.SH FILES
.TP
\fI/etc/openclaw\-egress/egressd.toml\fR
The config (every key optional). When it is absent and no \fB\-\-config\fR is given,
built\-in defaults are used.
.TP
\fI/etc/openclaw\-egress/allowlist.conf\fR
The allowlist (\fBallowlist\fR in the config); its format is described at the top of
the file.
.TP
\fI/run/openclaw\-egress/control.sock\fR
The daemon's control socket, which \fBstatus\fR asks (\fB[control] socket\fR).
.SH "SEE ALSO"
\fBopenclaw\-egressd\fR(8), \fBnft\fR(8), \fBsystemctl\fR(1);
/usr/share/doc/openclaw\-egress/
"#;

/// The DESCRIPTION of `openclaw-egressd(8)` (clap's is one line).
const DAEMON_DESCRIPTION: &str = r#".SH DESCRIPTION
Keeps the nftables table \fBinet openclaw_egress\fR (\fB[firewall] table\fR) in line
with the config and the allowlist. It validates the config first and exits 1 with every
error; it loads the table with its final rules before the first DNS query, so traffic is
closed from the first moment. Then it re\-resolves every hostname when its TTL runs out,
applies edits of the config and the allowlist as they happen, restores the table when
something else changes or deletes it, and answers \fBopenclaw\-egress status\fR on its
control socket.
.PP
It runs in the foreground. Under systemd (\fBType=notify\fR) it reports readiness and
its state with sd_notify and pings the watchdog; it logs to the journal when its
standard error is the journal, else to standard error.
"#;

/// Sections appended to `openclaw-egressd(8)`.
const DAEMON_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the config and the allowlist and resolve every hostname again now
(\fBsystemctl reload openclaw\-egressd\fR checks the config first, then sends it).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Exit 0, leaving the rules in place (so traffic stays closed while the daemon is down),
unless \fB\-\-flush\-on\-exit\fR is given.
.TP
\fBSIGUSR1\fR
Log a dump of the state.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
A tracing filter; when set, it wins over \fB\-\-log\-level\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR
Set by systemd: readiness, status and watchdog pings go there.
.SH "EXIT STATUS"
0 after SIGTERM or SIGINT; 1 when the config is invalid or the table cannot be loaded
(for example without CAP_NET_ADMIN); 2 on a usage error.
.SH FILES
.TP
\fI/etc/openclaw\-egress/egressd.toml\fR
The config.
.TP
\fI/etc/openclaw\-egress/allowlist.conf\fR
The allowlist.
.TP
\fI/run/openclaw\-egress/control.sock\fR
The control socket (mode 0600).
.TP
\fI/usr/lib/systemd/system/openclaw\-egressd.service\fR
The hardened systemd unit.
.SH "SEE ALSO"
\fBopenclaw\-egress\fR(1), \fBsystemd.service\fR(5), \fBnft\fR(8)
"#;

/// Renders a top-level page: clap's sections with `description` (when
/// given) instead of clap's, and `extra` before VERSION.
fn render_page(
    man: &Man,
    subcommands: bool,
    description: Option<&str>,
    extra: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    match description {
        Some(d) => out.extend_from_slice(d.as_bytes()),
        None => man.render_description_section(&mut out)?,
    }
    man.render_options_section(&mut out)?;
    if subcommands {
        man.render_subcommands_section(&mut out)?;
    }
    out.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn write(path: &Path, bytes: &[u8], written: &mut Vec<PathBuf>) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path.to_path_buf());
    Ok(())
}

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Writes every page and completion under `out`; returns the files written.
fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man");
    mkdir(&man_dir)?;

    let cli = cli_command();
    let source = format!("openclaw-egress {}", env!("CARGO_PKG_VERSION"));
    let page = |cmd: clap::Command, section: &str| {
        Man::new(cmd)
            .section(section)
            .source(source.clone())
            .manual("openclaw-egress manual")
    };
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = page(sub.clone(), "1");
        let mut bytes = Vec::new();
        man.render(&mut bytes)?;
        write(&man_dir.join(man.get_filename()), &bytes, &mut written)?;
    }
    let man = page(cli.clone(), "1");
    let bytes = render_page(&man, true, None, CLI_EXTRA)?;
    write(&man_dir.join(man.get_filename()), &bytes, &mut written)?;

    let man = page(daemon_command(), "8");
    let bytes = render_page(&man, false, Some(DAEMON_DESCRIPTION), DAEMON_EXTRA)?;
    write(&man_dir.join(man.get_filename()), &bytes, &mut written)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let dir = out.join("completions").join(shell.to_string());
        mkdir(&dir)?;
        for mut cmd in [cli.clone(), daemon_command()] {
            let name = cmd.get_name().to_string();
            // The names the shells' vendor folders expect.
            let file = match shell {
                Shell::Bash => name.clone(),
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => unreachable!("only bash, zsh and fish are generated"),
            };
            let mut bytes = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut bytes);
            write(&dir.join(file), &bytes, &mut written)?;
        }
    }
    Ok(written)
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: openclaw-egress-gen OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions)");
    };
    let written = generate(Path::new(&out))?;
    let mut stdout = std::io::stdout().lock();
    for path in written {
        writeln!(stdout, "{}", path.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed on drop.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir()
                .join(format!("openclaw-egress-gen-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
    }

    #[test]
    fn every_subcommand_gets_a_page_and_the_top_page_lists_it() {
        let tmp = Tmp::new("pages");
        generate(&tmp.0).unwrap();
        let top = read(&tmp.0.join("man/openclaw-egress.1"));
        let subs: Vec<String> = cli_command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        assert!(subs.len() >= 8, "subcommands: {subs:?}");
        for sub in &subs {
            let page = tmp.0.join(format!("man/openclaw-egress-{sub}.1"));
            let text = read(&page);
            assert!(
                text.contains(&format!(".TH openclaw-egress-{sub} 1")),
                "{}: no title line",
                page.display()
            );
            // The subcommand list names each page as openclaw-egress-SUB(1).
            assert!(
                top.contains(&format!(
                    "openclaw\\-egress\\-{}(1)",
                    sub.replace('-', "\\-")
                )),
                "openclaw-egress.1 does not list {sub}"
            );
        }
        assert!(!tmp.0.join("man/openclaw-egress-help.1").exists());
    }

    #[test]
    fn the_top_pages_carry_their_own_sections() {
        let tmp = Tmp::new("sections");
        generate(&tmp.0).unwrap();
        let cli = read(&tmp.0.join("man/openclaw-egress.1"));
        for want in [
            ".TH openclaw-egress 1",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            "\\-\\-config",
            ".SH SUBCOMMANDS",
            ".SH \"EXIT STATUS\"",
            ".SH FILES",
            ".SH VERSION",
            env!("CARGO_PKG_VERSION"),
        ] {
            assert!(
                cli.contains(want),
                "openclaw-egress.1 lacks {want:?}:\n{cli}"
            );
        }
        let daemon = read(&tmp.0.join("man/openclaw-egressd.8"));
        for want in [
            ".TH openclaw-egressd 8",
            "\\-\\-flush\\-on\\-exit",
            "\\-\\-log\\-level",
            ".SH SIGNALS",
            "SIGHUP",
            ".SH FILES",
        ] {
            assert!(
                daemon.contains(want),
                "openclaw-egressd.8 lacks {want:?}:\n{daemon}"
            );
        }
        // One DESCRIPTION only (ours replaces clap's one-liner).
        assert_eq!(daemon.matches(".SH DESCRIPTION").count(), 1);
    }

    #[test]
    fn completions_know_every_subcommand_and_option() {
        let tmp = Tmp::new("completions");
        let written = generate(&tmp.0).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&tmp.0).unwrap().display().to_string())
            .filter(|p| p.starts_with("completions/"))
            .collect();
        assert_eq!(
            names,
            [
                "completions/bash/openclaw-egress",
                "completions/bash/openclaw-egressd",
                "completions/zsh/_openclaw-egress",
                "completions/zsh/_openclaw-egressd",
                "completions/fish/openclaw-egress.fish",
                "completions/fish/openclaw-egressd.fish",
            ]
        );
        for shell in [
            "bash/openclaw-egress",
            "zsh/_openclaw-egress",
            "fish/openclaw-egress.fish",
        ] {
            let text = read(&tmp.0.join("completions").join(shell));
            for sub in cli_command().get_subcommands() {
                assert!(
                    text.contains(sub.get_name()),
                    "{shell} lacks {}",
                    sub.get_name()
                );
            }
            assert!(text.contains("comment"), "{shell} lacks --comment");
        }
        let bash_d = read(&tmp.0.join("completions/bash/openclaw-egressd"));
        assert!(bash_d.contains("--flush-on-exit"));
    }

    #[test]
    fn the_daemon_page_documents_the_default_config() {
        let tmp = Tmp::new("default");
        generate(&tmp.0).unwrap();
        let daemon = read(&tmp.0.join("man/openclaw-egressd.8"));
        let escaped = daemon_args::DEFAULT_CONFIG.replace('-', "\\-");
        assert!(
            daemon.contains(&escaped),
            "the default {} is not on the page",
            daemon_args::DEFAULT_CONFIG
        );
    }
}
