//! The exact pfctl (and ifconfig) invocations of each kind of change, run
//! against the in-memory fake pf, and what they leave behind: pf.conf,
//! the token file, the anchor's rules and tables.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use egress_core::config::Action;
use egress_core::diff::ChangeKind;
use egress_core::ruleset::{
    AddrRange, ElementAttrs, ElementKey, Elements, Layout, LogSpec, Ruleset, SetId,
};
use egress_core::{PortRange, Proto};
use egress_pf::render::{desired_tables, Anchor};
use egress_pf::testing::{FakePf, TempDir, APPLE_PF_CONF};
use egress_pf::{HostProbe, Pf, PfApplyMode, PfError, PfOptions};

const A: &str = "openclaw-egress";

struct Env {
    dir: TempDir,
    pf: Pf<FakePf>,
}

impl Env {
    fn new(tag: &str, interfaces: &[&str]) -> Env {
        let dir = TempDir::new(tag);
        let conf = dir.write("pf.conf", APPLE_PF_CONF);
        fs::create_dir(dir.join("root")).unwrap();
        let opts = PfOptions {
            pfctl: "pfctl".into(),
            ifconfig: "ifconfig".into(),
            pf_conf: conf,
            state_dir: dir.join("run"),
            host: HostProbe {
                root: dir.join("root"),
                docker_host: None,
            },
        };
        Env {
            pf: Pf::new(FakePf::new(interfaces), opts),
            dir,
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("pf.conf")
    }

    fn fake(&mut self) -> &mut FakePf {
        self.pf.runner_mut()
    }

    fn lines(&self) -> Vec<String> {
        self.pf.runner().lines()
    }

    fn stdin_of(&self, line: &str) -> String {
        self.pf
            .runner()
            .calls
            .iter()
            .find(|c| c.line() == line)
            .and_then(|c| c.stdin.clone())
            .unwrap_or_else(|| panic!("no call {line}"))
    }

    fn token_file(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("run/pf-token-openclaw-egress")).ok()
    }
}

fn layout(action: Action) -> Layout {
    Layout {
        table: "openclaw_egress".into(),
        interfaces: vec!["bridge100".into()],
        action,
        log: Some(LogSpec {
            rate: 5,
            burst: 10,
            prefix: "openclaw-egress deny: ".into(),
        }),
        intra: egress_core::config::Intra::Deny,
        host_ports: Vec::new(),
    }
}

fn attrs(comment: &str) -> ElementAttrs {
    ElementAttrs {
        timeout: Some(Duration::from_secs(300)),
        comment: comment.into(),
    }
}

fn svc(addr: &str, port: u16) -> ElementKey {
    ElementKey::Service {
        addr: AddrRange::single(addr.parse().unwrap()),
        proto: Proto::Tcp,
        ports: PortRange::single(port),
    }
}

/// DNS server plus `api.example:PORT` at the given addresses.
fn ruleset(action: Action, dns: bool, api: &[(&str, u16)]) -> Ruleset {
    let mut e = Elements::new();
    if dns {
        e.insert(
            SetId::Dns4,
            ElementKey::Addr("198.18.1.53".parse().unwrap()),
            ElementAttrs {
                timeout: None,
                comment: "dns server".into(),
            },
        );
    }
    for (addr, port) in api {
        e.insert(SetId::Svc4, svc(addr, *port), attrs("api.example"));
    }
    Ruleset {
        layout: layout(action),
        elements: e,
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn reads(tables: &[&str]) -> Vec<String> {
    let mut v = s(&[
        "pfctl -s rules",
        "pfctl -a openclaw-egress -v -s rules",
        "pfctl -a openclaw-egress -s Tables",
    ]);
    for t in tables {
        v.push(format!("pfctl -a openclaw-egress -t {t} -T show"));
    }
    v
}

fn first_apply(env: &mut Env, rs: &Ruleset) {
    env.pf.apply(rs).unwrap();
    env.fake().clear_calls();
}

#[test]
fn first_apply_edits_pf_conf_loads_the_anchor_and_enables_pf() {
    let mut env = Env::new("first", &["lo0", "en0", "bridge100"]);
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 443)]);
    let r = env.pf.apply(&rs).unwrap();
    let conf = env.conf().display().to_string();
    assert_eq!(
        env.lines(),
        [
            "pfctl -s rules".to_string(),
            "pfctl -a openclaw-egress -v -s rules".into(),
            "ifconfig -l".into(),
            format!("pfctl -n -f {conf}"),
            format!("pfctl -f {conf}"),
            "pfctl -a openclaw-egress -f -".into(),
            "pfctl -s info".into(),
            "pfctl -E".into(),
        ]
    );
    assert_eq!(r.mode, PfApplyMode::Full);
    assert_eq!(
        r.reason.as_deref(),
        Some("anchor \"openclaw-egress\" does not exist or is empty")
    );
    assert_eq!(r.diff.count(ChangeKind::Added), 2);
    assert_eq!(r.commands, 3);
    assert!(r.enabled_pf);
    assert!(r.warnings.is_empty());
    assert_eq!(r.tables, s(&["dns", "any_ports", "svc_tcp_443"]));

    // What was loaded is the rendered anchor, rules and addresses together.
    let tables = desired_tables(&rs.elements);
    let want = Anchor::for_tables(A, &rs.layout, &tables)
        .unwrap()
        .rules_file(&tables);
    assert_eq!(env.stdin_of("pfctl -a openclaw-egress -f -"), want);
    assert_eq!(r.bytes, want.len());

    let fake = env.pf.runner();
    assert!(fake.enabled);
    assert_eq!(fake.main_anchors, s(&["com.apple/*", A]));
    assert_eq!(fake.table(A, "svc_tcp_443"), s(&["198.18.1.10"]));
    assert_eq!(fake.table(A, "dns"), s(&["198.18.1.53"]));
    assert_eq!(
        env.token_file(),
        Some(format!("{}\n", env.pf.runner().tokens[0]))
    );
    let text = fs::read_to_string(env.conf()).unwrap();
    assert!(text.starts_with(APPLE_PF_CONF));
    assert_eq!(text.matches("anchor \"openclaw-egress\"").count(), 1);
    assert_eq!(
        fs::read_to_string(env.dir.join("pf.conf.openclaw-egress.bak")).unwrap(),
        APPLE_PF_CONF
    );
    assert!(env.pf.read(&rs.layout).unwrap().unwrap().layout_matches());
}

#[test]
fn an_address_change_replaces_only_its_table() {
    let mut env = Env::new("addr", &["bridge100"]);
    first_apply(
        &mut env,
        &ruleset(Action::Reject, true, &[("198.18.1.10", 443)]),
    );
    let rs = ruleset(
        Action::Reject,
        true,
        &[("198.18.1.11", 443), ("198.18.1.12", 443)],
    );
    let r = env.pf.apply(&rs).unwrap();
    let mut want = reads(&["any_ports", "dns", "svc_tcp_443"]);
    want.push("pfctl -a openclaw-egress -t svc_tcp_443 -T replace -f -".into());
    want.push("pfctl -s info".into());
    assert_eq!(env.lines(), want);
    assert_eq!(
        env.stdin_of("pfctl -a openclaw-egress -t svc_tcp_443 -T replace -f -"),
        "198.18.1.11\n198.18.1.12\n"
    );
    assert_eq!(r.mode, PfApplyMode::Tables);
    assert_eq!(r.reason, None);
    assert_eq!(r.tables, s(&["svc_tcp_443"]));
    assert_eq!(
        (
            r.diff.count(ChangeKind::Added),
            r.diff.count(ChangeKind::Removed),
            r.diff.count(ChangeKind::Refreshed)
        ),
        (2, 1, 0)
    );
    assert_eq!(r.commands, 1);
    assert!(!r.enabled_pf);
    assert_eq!(
        env.pf.runner().table(A, "svc_tcp_443"),
        s(&["198.18.1.11", "198.18.1.12"])
    );
}

#[test]
fn a_new_port_reloads_the_rules_and_kills_the_old_groups_table() {
    let mut env = Env::new("port", &["bridge100"]);
    first_apply(
        &mut env,
        &ruleset(Action::Reject, true, &[("198.18.1.10", 443)]),
    );
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 8443)]);
    let r = env.pf.apply(&rs).unwrap();
    let mut want = reads(&["any_ports", "dns", "svc_tcp_443"]);
    want.extend(s(&[
        "ifconfig -l",
        "pfctl -a openclaw-egress -f -",
        "pfctl -a openclaw-egress -t svc_tcp_443 -T kill",
        "pfctl -s info",
    ]));
    assert_eq!(env.lines(), want);
    assert_eq!(r.mode, PfApplyMode::Full);
    assert_eq!(
        r.reason.as_deref(),
        Some("the (protocol, port) tables change: +svc_tcp_8443 -svc_tcp_443")
    );
    assert_eq!(r.pf_conf, Some(egress_pf::PfConfChange::Present));
    let fake = env.pf.runner();
    assert_eq!(
        fake.anchors[A].tables.keys().cloned().collect::<Vec<_>>(),
        s(&["any_ports", "dns", "svc_tcp_8443"])
    );
    assert!(fake.anchors[A]
        .rules
        .iter()
        .any(|r| r.contains("to <svc_tcp_8443> port 8443 ")));
    // Stable afterwards.
    env.fake().clear_calls();
    assert_eq!(env.pf.apply(&rs).unwrap().mode, PfApplyMode::Unchanged);
}

#[test]
fn no_change_only_reads_and_checks_pf_is_on() {
    let mut env = Env::new("same", &["bridge100"]);
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 443)]);
    first_apply(&mut env, &rs);
    let r = env.pf.apply(&rs).unwrap();
    let mut want = reads(&["any_ports", "dns", "svc_tcp_443"]);
    want.push("pfctl -s info".into());
    assert_eq!(env.lines(), want);
    assert_eq!(r.mode, PfApplyMode::Unchanged);
    assert!(r.diff.is_empty());
    assert_eq!((r.commands, r.bytes), (0, 0));
}

#[test]
fn flush_removes_rules_and_tables_and_releases_our_token() {
    let mut env = Env::new("flush", &["bridge100"]);
    first_apply(
        &mut env,
        &ruleset(Action::Reject, true, &[("198.18.1.10", 443)]),
    );
    let token = env.pf.runner().tokens[0];
    // Someone else holds a reference too: ours goes, theirs stays.
    env.fake().tokens.push(1);
    assert!(env.pf.flush("openclaw_egress").unwrap());
    assert_eq!(
        env.lines(),
        [
            "pfctl -a openclaw-egress -s rules".to_string(),
            "pfctl -a openclaw-egress -s Tables".into(),
            "pfctl -a openclaw-egress -F rules".into(),
            "pfctl -a openclaw-egress -F Tables".into(),
            format!("pfctl -X {token}"),
        ]
    );
    assert_eq!(env.token_file(), None);
    let fake = env.pf.runner();
    assert!(fake.anchors.is_empty());
    assert_eq!(fake.tokens, [1]);
    assert!(fake.enabled);

    // Again: the anchor is still evaluated (pf.conf) but empty.
    env.fake().clear_calls();
    assert!(!env.pf.flush("openclaw_egress").unwrap());
    assert_eq!(
        env.lines(),
        s(&[
            "pfctl -a openclaw-egress -s rules",
            "pfctl -a openclaw-egress -s Tables"
        ])
    );
    // pf.conf keeps its line.
    assert!(fs::read_to_string(env.conf())
        .unwrap()
        .contains("anchor \"openclaw-egress\""));
}

#[test]
fn a_token_pf_no_longer_knows_fails_flush_once_then_is_gone() {
    let mut env = Env::new("deadtoken", &["bridge100"]);
    first_apply(&mut env, &ruleset(Action::Reject, true, &[]));
    env.fake().tokens.clear();
    let err = env.pf.flush("openclaw_egress").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("failed (exit status 1): pfctl: DIOCSTOPREF: Invalid argument"),
        "{err}"
    );
    assert_eq!(env.token_file(), None);
    assert!(!env.pf.flush("openclaw_egress").unwrap());
}

#[test]
fn a_failing_pfctl_is_named_with_its_message_and_nothing_after_it_runs() {
    let mut env = Env::new("fail", &["bridge100"]);
    env.fake().fail(
        &["-a", A, "-f", "-"],
        1,
        "No ALTQ support in kernel\nALTQ related functions disabled\n/dev/stdin:21: syntax error\npfctl: Syntax error in config file: pf rules not loaded\n",
    );
    let err = env
        .pf
        .apply(&ruleset(Action::Reject, true, &[("198.18.1.10", 443)]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`pfctl -a openclaw-egress -f -` failed (exit status 1): /dev/stdin:21: syntax error; pfctl: Syntax error in config file: pf rules not loaded"
    );
    assert_eq!(env.lines().last().unwrap(), "pfctl -a openclaw-egress -f -");
    assert!(!env.pf.runner().enabled);
    assert_eq!(env.token_file(), None);

    // A read that fails for another reason than a missing anchor.
    env.fake().clear_failures();
    env.fake()
        .fail(&["-s", "rules"], 1, "pfctl: /dev/pf: Permission denied\n");
    let err = env.pf.read(&layout(Action::Reject)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`pfctl -s rules` failed (exit status 1): pfctl: /dev/pf: Permission denied"
    );
}

#[test]
fn docker_desktop_is_refused_before_anything_changes() {
    let mut env = Env::new("dd", &["lo0", "en0"]);
    fs::create_dir_all(env.dir.join("root/var/run")).unwrap();
    std::os::unix::fs::symlink(
        "/Users/alice/.docker/run/docker.sock",
        env.dir.join("root/var/run/docker.sock"),
    )
    .unwrap();
    let err = env
        .pf
        .apply(&ruleset(Action::Reject, true, &[]))
        .unwrap_err();
    assert!(matches!(
        err,
        PfError::ContainersInVm {
            runtime: "Docker Desktop",
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.starts_with("refusing to load pf rules: Docker Desktop runs the containers inside its own virtual machine (/var/run/docker.sock -> /Users/alice/.docker/run/docker.sock), and the agent network's bridge (bridge100) is not an interface of this Mac"), "{msg}");
    assert_eq!(
        env.lines(),
        s(&[
            "pfctl -s rules",
            "pfctl -a openclaw-egress -v -s rules",
            "ifconfig -l"
        ])
    );
    assert_eq!(fs::read_to_string(env.conf()).unwrap(), APPLE_PF_CONF);
    assert_eq!(env.token_file(), None);
}

#[test]
fn orbstack_is_refused_and_a_present_bridge_is_not() {
    let mut env = Env::new("orb", &["lo0", "en0"]);
    fs::create_dir_all(env.dir.join("root/Users/bob/.orbstack/run")).unwrap();
    fs::write(env.dir.join("root/Users/bob/.orbstack/run/docker.sock"), "").unwrap();
    let err = env
        .pf
        .apply(&ruleset(Action::Reject, true, &[]))
        .unwrap_err();
    assert!(err.to_string().contains("OrbStack runs the containers inside its own virtual machine (/Users/bob/.orbstack/run/docker.sock exists)"), "{err}");

    // With the bridge on the host, OrbStack being installed does not matter.
    env.fake().interfaces.push("bridge100".into());
    let r = env.pf.apply(&ruleset(Action::Reject, true, &[])).unwrap();
    assert_eq!(r.mode, PfApplyMode::Full);
    assert!(r.warnings.is_empty());
}

#[test]
fn a_missing_bridge_without_a_vm_runtime_is_a_warning() {
    let mut env = Env::new("missing", &["lo0", "en0"]);
    let r = env.pf.apply(&ruleset(Action::Reject, true, &[])).unwrap();
    assert_eq!(r.mode, PfApplyMode::Full);
    assert_eq!(
        r.warnings,
        s(&["interface bridge100 does not exist (yet); its rules take effect when it appears"])
    );
}

#[test]
fn a_pf_conf_pfctl_refuses_is_restored_and_nothing_is_loaded() {
    let mut env = Env::new("reject", &["bridge100"]);
    let conf = env.conf().display().to_string();
    env.fake().fail(
        &["-n", "-f", &conf],
        1,
        "pfctl: Rules must be in order: options, normalization, queueing, translation, filtering\n",
    );
    let err = env
        .pf
        .apply(&ruleset(Action::Reject, true, &[]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{conf}: adding the anchor made a file pfctl refuses, so the original was restored: `pfctl -n -f {conf}` failed (exit status 1): pfctl: Rules must be in order: options, normalization, queueing, translation, filtering")
    );
    assert_eq!(fs::read_to_string(env.conf()).unwrap(), APPLE_PF_CONF);
    assert_eq!(env.lines().last().unwrap(), &format!("pfctl -n -f {conf}"));
}

#[test]
fn a_main_ruleset_reloaded_without_the_anchor_is_repaired() {
    let mut env = Env::new("unref", &["bridge100"]);
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 443)]);
    first_apply(&mut env, &rs);
    // Someone loaded a pf.conf without the anchor (e.g. the backup).
    env.fake().main_anchors = s(&["com.apple/*"]);
    assert!(!env.pf.read(&rs.layout).unwrap().unwrap().layout_matches());
    env.fake().clear_calls();
    let r = env.pf.apply(&rs).unwrap();
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .starts_with("the main ruleset does not evaluate anchor \"openclaw-egress\""),
        "{r:?}"
    );
    let conf = env.conf().display().to_string();
    let mut want = reads(&["any_ports", "dns", "svc_tcp_443"]);
    want.extend([
        "ifconfig -l".to_string(),
        format!("pfctl -f {conf}"),
        "pfctl -a openclaw-egress -f -".into(),
        "pfctl -s info".into(),
    ]);
    assert_eq!(env.lines(), want);
    assert!(env.pf.runner().main_anchors.contains(&A.to_string()));
}

#[test]
fn rules_edited_by_hand_or_another_layout_force_a_full_load() {
    let mut env = Env::new("drift", &["bridge100"]);
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 443)]);
    first_apply(&mut env, &rs);
    env.fake().anchors.get_mut(A).unwrap().rules.pop();
    let r = env.pf.apply(&rs).unwrap();
    assert_eq!(r.mode, PfApplyMode::Full);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .starts_with("the anchor's 13 rules are not this layout's 14"),
        "{r:?}"
    );
    // Another action is another layout.
    let r = env
        .pf
        .apply(&ruleset(Action::Drop, true, &[("198.18.1.10", 443)]))
        .unwrap();
    assert_eq!(r.mode, PfApplyMode::Full);
    assert!(env.pf.runner().anchors[A]
        .rules
        .last()
        .unwrap()
        .starts_with("block drop in log quick on bridge100 all"));
}

#[test]
fn a_disabled_pf_gets_a_new_reference() {
    let mut env = Env::new("disabled", &["bridge100"]);
    let rs = ruleset(Action::Reject, true, &[]);
    first_apply(&mut env, &rs);
    let old = env.token_file().unwrap();
    // `pfctl -d`: pf off, every token void.
    env.fake().enabled = false;
    env.fake().tokens.clear();
    let r = env.pf.apply(&rs).unwrap();
    assert_eq!(r.mode, PfApplyMode::Unchanged);
    assert!(r.enabled_pf);
    assert_eq!(
        &env.lines()[env.lines().len() - 2..],
        s(&["pfctl -s info", "pfctl -E"])
    );
    let new = env.token_file().unwrap();
    assert_ne!(old, new);
    assert_eq!(new, format!("{}\n", env.pf.runner().tokens[0]));
}

#[test]
fn a_table_that_must_be_empty_is_emptied_on_a_full_load() {
    let mut env = Env::new("empty", &["bridge100"]);
    first_apply(
        &mut env,
        &ruleset(Action::Reject, true, &[("198.18.1.10", 443)]),
    );
    // No DNS servers any more, and a port change forces a full load.
    let r = env
        .pf
        .apply(&ruleset(Action::Reject, false, &[("198.18.1.10", 22)]))
        .unwrap();
    assert_eq!(r.mode, PfApplyMode::Full);
    let lines = env.lines();
    assert!(
        lines.contains(&"pfctl -a openclaw-egress -t dns -T flush".to_string()),
        "{lines:?}"
    );
    assert!(lines.contains(&"pfctl -a openclaw-egress -t svc_tcp_443 -T kill".to_string()));
    assert!(env.pf.runner().table(A, "dns").is_empty());

    // Without a full load an empty table is a replace with no input.
    first_apply(
        &mut env,
        &ruleset(Action::Reject, true, &[("198.18.1.10", 22)]),
    );
    env.pf
        .apply(&ruleset(Action::Reject, false, &[("198.18.1.10", 22)]))
        .unwrap();
    assert_eq!(
        env.stdin_of("pfctl -a openclaw-egress -t dns -T replace -f -"),
        ""
    );
}

#[test]
fn deny_counters_come_from_the_labelled_deny_rules() {
    let mut env = Env::new("counters", &["bridge100"]);
    let rs = ruleset(Action::Reject, true, &[("198.18.1.10", 443)]);
    first_apply(&mut env, &rs);
    let last = env.pf.runner().anchors[A].rules.len() - 1;
    env.fake()
        .anchors
        .get_mut(A)
        .unwrap()
        .counters
        .extend([(0, (7, 700)), (last, (5, 300))]);
    assert_eq!(env.pf.denied_counters(&rs.layout).unwrap(), (5, 300));
    let r = env.pf.apply(&rs).unwrap();
    assert_eq!((r.denied_packets, r.denied_bytes), (5, 300));
    env.pf.flush("openclaw_egress").unwrap();
    assert_eq!(env.pf.denied_counters(&rs.layout).unwrap(), (0, 0));
}

#[test]
fn a_renamed_table_keeps_its_own_anchor_and_token() {
    let mut env = Env::new("rename", &["bridge100"]);
    first_apply(&mut env, &ruleset(Action::Reject, true, &[]));
    let mut other = ruleset(Action::Reject, true, &[]);
    other.layout.table = "agents_b".into();
    // The daemon applies the new config, then flushes the old table.
    env.pf.apply(&other).unwrap();
    env.pf.flush("openclaw_egress").unwrap();
    let fake = env.pf.runner();
    assert!(fake.enabled, "the new anchor's reference keeps pf on");
    assert_eq!(fake.tokens.len(), 1);
    assert!(fake.anchors.contains_key("agents-b"));
    assert!(!fake.anchors.contains_key(A));
    assert!(env.dir.join("run/pf-token-agents-b").exists());
}
