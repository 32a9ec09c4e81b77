//! The command on the pf backend, on Linux: a debug build of
//! `openclaw-egress` with `OPENCLAW_EGRESS_PF_SIM` set drives the pf
//! backend, and the same binary, called as `pfctl` and `ifconfig` through
//! symlinks, plays pf (`egress_pf::testing::FakePf`, its state in a JSON
//! file this test reads). Needs no root and touches no firewall.
//!
//! This checks the command's side (what it asks pfctl, what it prints);
//! whether a real pfctl accepts the rules is for a Mac (docs/macos.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_firewall::pf::testing::FakePf;
use egress_firewall::sim as pf_sim;
use testkit::TempDir;

const CLI: &str = env!("CARGO_BIN_EXE_openclaw-egress");
const TABLE: &str = "oc_cli_pf";
const ANCHOR: &str = "oc-cli-pf";

struct Sim {
    dir: TempDir,
}

impl Sim {
    fn new() -> Sim {
        let dir = TempDir::new("cli-pf");
        pf_sim::install(
            &dir.join("pf"),
            Path::new(CLI),
            &["lo0", "en0", "bridge100"],
        )
        .expect("set up the simulated Mac");
        let sim = Sim { dir };
        sim.dir.write(
            "egressd.toml",
            &format!(
                "allowlist = \"allowlist.conf\"\n\
                 [network]\ninterface = \"bridge100\"\n\
                 [resolver]\nservers = [\"127.0.0.1:53\"]\n\
                 [dns]\nallow = [\"198.18.23.53\"]\n\
                 [firewall]\ntable = \"{TABLE}\"\nallow_private = [\"198.18.0.0/15\"]\n\
                 [control]\nsocket = \"{}\"\n",
                sim.dir.join("control.sock").display()
            ),
        );
        sim.dir
            .write("allowlist.conf", "198.18.23.1:443\n198.18.23.8/30:8443\n");
        sim
    }

    fn pf(&self) -> PathBuf {
        self.dir.join("pf")
    }

    fn state_file(&self) -> PathBuf {
        pf_sim::state_file(&self.pf())
    }

    fn state(&self) -> FakePf {
        FakePf::with_state(&self.state_file(), |f| f.clone()).unwrap()
    }

    fn addrs(&self) -> BTreeSet<String> {
        self.state()
            .anchors
            .get(ANCHOR)
            .map(|a| a.tables.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Runs the command; panics unless it exits with `code`.
    #[track_caller]
    fn run(&self, args: &[&str], code: i32) -> (String, String) {
        let out: Output = Command::new(CLI)
            .arg("--config")
            .arg(self.dir.join("egressd.toml"))
            .args(args)
            .env(pf_sim::ENV, self.pf())
            .env_remove("DOCKER_HOST")
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "openclaw-egress {args:?}\nstdout:\n{o}\nstderr:\n{e}"
        );
        (o, e)
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn calls_since(sim: &Sim, n: usize) -> Vec<String> {
    sim.state().calls[n..]
        .iter()
        .map(|c| {
            let prog = Path::new(&c.program)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            format!("{prog} {}", c.args.join(" "))
        })
        .collect()
}

#[test]
fn plan_apply_show_allow_and_flush_drive_pf() {
    let sim = Sim::new();

    // plan: nothing loaded yet, nothing changed by planning.
    let (out, err) = sim.run(&["plan"], 0);
    assert!(err.contains("SIMULATED pf"), "{err}");
    assert!(
        out.starts_with(&format!("pf anchor {ANCHOR}: full load (")),
        "{out}"
    );
    assert!(out.contains("+ allow_v4 198.18.23.1 . tcp . 443"), "{out}");
    assert!(sim.state().anchors.is_empty());
    let (out, _) = sim.run(&["plan", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["firewall"], "pf");
    assert_eq!(v["full_reload"], true);

    // show: the anchor file as pf loads it, labels and tables included.
    let (out, _) = sim.run(&["show"], 0);
    assert!(out.contains(&format!("pf anchor \"{ANCHOR}\"")), "{out}");
    assert!(out.contains("on bridge100"), "{out}");
    assert!(out.contains("198.18.23.53"), "{out}");
    assert!(out.contains("198.18.23.8/30"), "{out}");

    // apply: pf.conf gets the anchor, the rules and tables are loaded in
    // one pfctl transaction, pf is enabled with a reference of ours.
    let (out, err) = sim.run(&["apply"], 0);
    assert!(
        out.starts_with(&format!("pf anchor {ANCHOR}: full load (")),
        "{out}"
    );
    assert!(out.contains("pfctl commands ("), "{out}");
    assert!(out.contains("filtering interface bridge100"), "{out}");
    assert!(err.contains("warning: added the anchor to"), "{err}");
    assert_eq!(
        sim.addrs(),
        set(&["198.18.23.1", "198.18.23.8/30", "198.18.23.53"])
    );
    let st = sim.state();
    assert!(st.enabled && st.tokens.len() == 1, "{st:#?}");
    let conf = std::fs::read_to_string(sim.pf().join("pf.conf")).unwrap();
    assert!(conf.contains(&format!("anchor \"{ANCHOR}\"")), "{conf}");

    // Again: nothing to do, and only reads were sent.
    let n = sim.state().calls.len();
    let (out, _) = sim.run(&["apply"], 0);
    assert!(out.contains(": no change;"), "{out}");
    for c in calls_since(&sim, n) {
        assert!(
            c.contains(" -s ") || c.contains("-T show") || c.starts_with("ifconfig"),
            "a write on an unchanged apply: {c}"
        );
    }

    // allow --apply: one table replaced, the rules untouched.
    let n = sim.state().calls.len();
    let (out, _) = sim.run(&["allow", "198.18.23.5:443", "--apply"], 0);
    assert!(out.contains(": element diff; 1 added, 0 removed"), "{out}");
    let writes: Vec<String> = calls_since(&sim, n)
        .into_iter()
        .filter(|c| c.contains("replace") || c.contains(" -f "))
        .collect();
    assert_eq!(
        writes,
        [format!("pfctl -a {ANCHOR} -t svc_tcp_443 -T replace -f -")],
        "{writes:?}"
    );
    assert!(sim.addrs().contains("198.18.23.5"));

    // flush: the anchor emptied, our reference released, pf off again.
    let (out, _) = sim.run(&["flush"], 0);
    assert_eq!(out, format!("removed pf anchor {ANCHOR}\n"));
    let st = sim.state();
    assert!(!st.anchors.contains_key(ANCHOR), "{st:#?}");
    assert!(st.tokens.is_empty() && !st.enabled, "{st:#?}");
    let (out, _) = sim.run(&["flush"], 0);
    assert_eq!(out, format!("pf anchor {ANCHOR} was not present\n"));
}
