//! Every program the backend runs goes through [`CommandRunner`], so tests
//! substitute a fake that records each argv and stdin and answers like pf
//! would (see [`crate::testing::FakePf`]).

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::error::PfError;

/// What a finished program left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// `Some(code)` when it exited, `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl CommandOutput {
    /// A successful run printing `stdout`.
    pub fn ok(stdout: impl Into<String>) -> CommandOutput {
        CommandOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A failed run (exit status `code`) printing `stderr`.
    pub fn failed(code: i32, stderr: impl Into<String>) -> CommandOutput {
        CommandOutput {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    /// True when the program exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn status_text(&self) -> String {
        match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        }
    }
}

/// Runs programs. `stdin`, when given, is written to the program's
/// standard input and closed; otherwise the program gets no input.
pub trait CommandRunner {
    /// Runs `program` with `args` and waits for it. An `Err` means it could
    /// not be started; a non-zero exit is an `Ok` with that status.
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> std::io::Result<CommandOutput>;
}

impl<R: CommandRunner + ?Sized> CommandRunner for &mut R {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> std::io::Result<CommandOutput> {
        (**self).run(program, args, stdin)
    }
}

/// The real runner: `std::process::Command`, no shell.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> std::io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            // Dropping the handle closes the pipe, which is pfctl's end of
            // file for `-f -`.
            let mut pipe = child.stdin.take().expect("stdin was piped");
            pipe.write_all(input)?;
        }
        let out = child.wait_with_output()?;
        Ok(CommandOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The command line as people type it, for error messages.
pub fn command_line(program: &str, args: &[String]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Runs a command and turns a failure to start or a non-zero exit into a
/// [`PfError`] naming the command and its stderr.
pub fn run_checked<R: CommandRunner + ?Sized>(
    runner: &mut R,
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, PfError> {
    let out = run_unchecked(runner, program, args, stdin)?;
    if out.success() {
        Ok(out)
    } else {
        Err(failure(program, args, &out))
    }
}

/// Runs a command; only a failure to start is an error.
pub fn run_unchecked<R: CommandRunner + ?Sized>(
    runner: &mut R,
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, PfError> {
    runner
        .run(program, args, stdin)
        .map_err(|source| PfError::Spawn {
            command: command_line(program, args),
            source,
        })
}

/// The error for a command that exited non-zero.
pub fn failure(program: &str, args: &[String], out: &CommandOutput) -> PfError {
    PfError::Command {
        command: command_line(program, args),
        status: out.status_text(),
        stderr: meaningful_stderr(&out.stderr),
    }
}

/// pfctl on macOS prints two ALTQ lines on stderr for nearly every command;
/// they are noise in an error message.
pub fn meaningful_stderr(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "No ALTQ support in kernel"
                && *l != "ALTQ related functions disabled"
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_system_runner_passes_stdin_and_captures_both_streams() {
        let mut r = SystemRunner;
        let out = r
            .run(
                "/bin/sh",
                &args(&["-c", "cat; echo oops >&2; exit 3"]),
                Some(b"hello\n"),
            )
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "oops\n");
        assert!(!out.success());
    }

    #[test]
    fn a_failing_command_is_named_with_its_stderr_without_altq_noise() {
        let mut r = SystemRunner;
        let err = run_checked(
            &mut r,
            "/bin/sh",
            &args(&[
                "-c",
                "echo 'No ALTQ support in kernel' >&2; echo 'pfctl: Syntax error in config file' >&2; exit 1",
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/bin/sh -c \"echo 'No ALTQ support in kernel' >&2; echo 'pfctl: Syntax error in config file' >&2; exit 1\"` failed (exit status 1): pfctl: Syntax error in config file"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let mut r = SystemRunner;
        let err =
            run_checked(&mut r, "/nonexistent/pfctl", &args(&["-s", "info"]), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot run `/nonexistent/pfctl -s info`: "),
            "{err}"
        );
    }
}
