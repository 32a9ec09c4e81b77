//! The macOS firewall path, run on Linux against a fake pf, so that the
//! binaries' pf wiring (anchor and tables, applies at address expiry,
//! re-checks on a timer, drift repair, flush) is tested end to end where no
//! Mac is available.
//!
//! With `OPENCLAW_EGRESS_PF_SIM=DIR` a binary drives the pf backend with
//! `DIR/pfctl` and `DIR/ifconfig` as its programs, `DIR/pf.conf` as pf.conf
//! and `DIR/run` for its token. The test makes those two programs symlinks
//! to the binary, which then acts as them: [`fake_program`] runs the
//! command against [`egress_pf::testing::FakePf`], whose state lives in
//! `DIR/pf-state.json`. `OPENCLAW_EGRESS_PF_SIM_POLL_MS` sets how often the
//! daemon re-checks pf (default 30 s).
//!
//! Only debug builds call in here ([`crate::open`], and `main` for the fake
//! programs, both under `cfg(debug_assertions)`): release builds (the
//! package) never read these variables.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use egress_pf::testing::FakePf;
use egress_pf::{CommandRunner, HostProbe, Pf, PfOptions, SystemRunner, DEFAULT_POLL};

use crate::Backend;

/// The folder of the simulated pf.
pub const ENV: &str = "OPENCLAW_EGRESS_PF_SIM";
/// How often the daemon re-checks the simulated pf, in milliseconds.
pub const POLL_ENV: &str = "OPENCLAW_EGRESS_PF_SIM_POLL_MS";

/// The state file of the fake in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("pf-state.json")
}

/// When this process was started as `pfctl` or `ifconfig` of a simulation,
/// runs that command against the fake and returns its exit code.
pub fn fake_program() -> Option<ExitCode> {
    let dir = PathBuf::from(std::env::var_os(ENV)?);
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_owned();
    if name != "pfctl" && name != "ifconfig" {
        return None;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The backend pipes a file only to `-f -`; otherwise stdin is null.
    let mut input = Vec::new();
    let stdin = if args.iter().any(|a| a == "-") {
        if let Err(e) = std::io::stdin().read_to_end(&mut input) {
            eprintln!("fake {name}: cannot read stdin: {e}");
            return Some(ExitCode::from(127));
        }
        Some(input.as_slice())
    } else {
        None
    };
    let out = FakePf::with_state(&state_file(&dir), |f| f.run(&name, &args, stdin));
    match out {
        Ok(Ok(out)) => {
            let _ = std::io::stdout().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().write_all(out.stderr.as_bytes());
            Some(ExitCode::from(
                out.code.map_or(1, |c| u8::try_from(c).unwrap_or(1)),
            ))
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("fake {name}: {e}");
            Some(ExitCode::from(127))
        }
    }
}

/// The pf backend on the simulation's programs, when one is configured,
/// with the simulation's folder (the caller says loudly that nothing is
/// filtered).
pub fn backend() -> Option<(Box<dyn Backend>, PathBuf)> {
    let dir = PathBuf::from(std::env::var_os(ENV)?);
    let poll = std::env::var(POLL_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_POLL, Duration::from_millis);
    let opts = PfOptions {
        pfctl: dir.join("pfctl").display().to_string(),
        ifconfig: dir.join("ifconfig").display().to_string(),
        pf_conf: dir.join("pf.conf"),
        state_dir: dir.join("run"),
        host: HostProbe {
            root: dir.join("root"),
            docker_host: None,
        },
    };
    Some((Box::new(Pf::new(SystemRunner, opts).with_poll(poll)), dir))
}

/// Sets up a simulated Mac in `dir` for the binary `program`: `pfctl` and
/// `ifconfig` linked to it, Apple's stock pf.conf, pf disabled, and these
/// network interfaces. Tests call this; `dir` must exist.
pub fn install(dir: &Path, program: &Path, interfaces: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("root"))?;
    for prog in ["pfctl", "ifconfig"] {
        std::os::unix::fs::symlink(program, dir.join(prog))?;
    }
    std::fs::write(dir.join("pf.conf"), egress_pf::testing::APPLE_PF_CONF)?;
    FakePf::with_state(&state_file(dir), |f| *f = FakePf::new(interfaces))
}
