//! What a command printed and how it exited, with assertions that show
//! both streams when they fail.

use std::fmt;
use std::path::Path;
use std::process::Output;

/// A finished command run.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code:\n{self}");
        self
    }

    /// Asserts that standard output contains `s`.
    #[track_caller]
    pub fn stdout_has(&self, s: &str) -> &Run {
        assert!(self.stdout.contains(s), "stdout lacks {s:?}:\n{self}");
        self
    }

    /// Asserts that standard error contains `s`.
    #[track_caller]
    pub fn stderr_has(&self, s: &str) -> &Run {
        assert!(self.stderr.contains(s), "stderr lacks {s:?}:\n{self}");
        self
    }
}

/// `(line, col)` of the `PATH:LINE:COL: message` lines of `text` about
/// `path` (how the binaries point at an error in a config or allowlist).
pub fn error_locations(text: &str, path: &Path) -> Vec<(usize, usize)> {
    let path = path.to_str().expect("a UTF-8 path");
    text.lines()
        .filter_map(|l| l.strip_prefix(path)?.strip_prefix(':'))
        .filter_map(|rest| {
            let mut it = rest.splitn(3, ':');
            let line = it.next()?.parse().ok()?;
            let col = it.next()?.parse().ok()?;
            it.next()?.strip_prefix(' ')?;
            Some((line, col))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_read_from_the_lines_about_the_path_only() {
        let text = "/e/a.conf:3:7: bad entry\n\
                    /e/a.conf.bak:1:1: other file\n\
                    /e/a.conf:12:1: another\n\
                    /e/a.conf:x:1: not a number\n\
                    note: /e/a.conf:4:4: not at the start\n";
        assert_eq!(
            error_locations(text, Path::new("/e/a.conf")),
            vec![(3, 7), (12, 1)]
        );
    }
}
