//! Compiler-style diagnostics (`PATH:LINE:COL: message`), shared by the
//! allowlist and config parsers so every error names where it is.

use std::fmt;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The input is rejected; nothing is applied.
    Error,
    /// The input is accepted; something is worth fixing (e.g. a duplicate).
    Warning,
}

/// One message about one place in one file. Lines and columns count from 1;
/// columns count characters (not bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the user named it.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, without the location.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(
                f,
                "{}:{}:{}: {}",
                self.path, self.line, self.col, self.message
            ),
            Severity::Warning => write!(
                f,
                "{}:{}:{}: warning: {}",
                self.path, self.line, self.col, self.message
            ),
        }
    }
}

/// Every error found in one input, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}
