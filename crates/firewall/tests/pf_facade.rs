//! The pf backend driven through the facade, on any platform, with the
//! fake pfctl: the calls a CLI or daemon makes and what they get back.

use std::time::Duration;

use egress_core::config::Action;
use egress_core::diff::ChangeKind;
use egress_core::ruleset::{AddrRange, ElementAttrs, ElementKey, Elements, Layout, Ruleset, SetId};
use egress_core::{PortRange, Proto};
use egress_firewall::pf::testing::{FakePf, TempDir, APPLE_PF_CONF};
use egress_firewall::pf::{HostProbe, Pf, PfOptions};
use egress_firewall::{ApplyMode, Backend, BackendKind, ChangeWatch, Error};

fn ruleset(addrs: &[&str], port: u16) -> Ruleset {
    let mut e = Elements::new();
    e.insert(
        SetId::Dns4,
        ElementKey::Addr("198.18.1.53".parse().unwrap()),
        ElementAttrs {
            timeout: None,
            comment: "dns".into(),
        },
    );
    for a in addrs {
        e.insert(
            SetId::Svc4,
            ElementKey::Service {
                addr: AddrRange::single(a.parse().unwrap()),
                proto: Proto::Tcp,
                ports: PortRange::single(port),
            },
            ElementAttrs {
                timeout: Some(Duration::from_secs(60)),
                comment: "api.example".into(),
            },
        );
    }
    Ruleset {
        layout: Layout {
            table: "openclaw_egress".into(),
            interfaces: vec!["bridge100".into()],
            action: Action::Reject,
            log: None,
            intra: egress_core::config::Intra::Deny,
            host_ports: Vec::new(),
        },
        elements: e,
    }
}

fn opts(dir: &TempDir) -> PfOptions {
    std::fs::create_dir(dir.join("root")).unwrap();
    PfOptions {
        pfctl: "pfctl".into(),
        ifconfig: "ifconfig".into(),
        pf_conf: dir.write("pf.conf", APPLE_PF_CONF),
        state_dir: dir.join("run"),
        host: HostProbe {
            root: dir.join("root"),
            docker_host: None,
        },
    }
}

#[test]
fn the_pf_backend_behind_the_facade() {
    let dir = TempDir::new("facade");
    let mut fake = FakePf::new(&["lo0", "en0", "bridge100"]);
    let mut pf = Pf::new(&mut fake, opts(&dir));
    let b: &mut dyn Backend = &mut pf;

    assert_eq!(b.kind(), BackendKind::Pf);
    assert!(!b.expires_elements());
    assert_eq!(
        b.watch(Box::new(|| true)).unwrap(),
        ChangeWatch::Poll(Duration::from_secs(30))
    );

    let rs = ruleset(&["198.18.1.10"], 443);
    // `show` on a Mac: the anchor file with its tables, from nothing live.
    let text = b.render(&rs).unwrap();
    assert!(text.contains("pf anchor \"openclaw-egress\""), "{text}");
    assert!(text.contains("198.18.1.10"), "{text}");
    assert!(text.contains("198.18.1.53"), "{text}");
    assert!(b.read(&rs.layout).unwrap().is_none());
    let plan = b.plan(&rs).unwrap();
    assert!(plan.reason.is_some() && plan.live.is_none());
    assert_eq!(plan.diff.count(ChangeKind::Added), 2);

    let r = b.apply(&rs).unwrap();
    assert_eq!(r.mode, ApplyMode::Full);
    // pfctl -f pf.conf, the anchor load, pfctl -E.
    assert_eq!((r.operations, r.element_operations), (3, 3));
    assert_eq!(
        r.warnings,
        [format!(
            "added the anchor to {} (backup: {})",
            std::fs::canonicalize(dir.join("pf.conf"))
                .unwrap()
                .display(),
            std::fs::canonicalize(dir.path())
                .unwrap()
                .join("pf.conf.openclaw-egress.bak")
                .display()
        )]
    );

    let r = b.apply(&ruleset(&["198.18.1.11"], 443)).unwrap();
    assert_eq!(r.mode, ApplyMode::Elements);
    assert_eq!((r.operations, r.element_operations), (1, 1));
    assert_eq!(
        (
            r.diff.count(ChangeKind::Added),
            r.diff.count(ChangeKind::Removed)
        ),
        (1, 1)
    );

    let rs = ruleset(&["198.18.1.11"], 443);
    assert_eq!(b.apply(&rs).unwrap().mode, ApplyMode::Unchanged);
    let live = b.read(&rs.layout).unwrap().unwrap();
    assert!(live.layout_matches);
    assert_eq!(live.elements.len(), 2);
    assert_eq!(b.denied_counters(&rs.layout).unwrap(), (0, 0));
    assert_eq!(b.apply_full(&rs).unwrap().reason.as_deref(), Some("forced"));

    assert!(b.flush("openclaw_egress").unwrap());
    assert!(!b.flush("openclaw_egress").unwrap());
    drop(pf);
    assert!(!fake.enabled);
    assert!(fake.anchors.is_empty());
}

#[test]
fn backend_errors_pass_through_unchanged() {
    let dir = TempDir::new("facade-err");
    let mut fake = FakePf::new(&["bridge100"]);
    fake.fail(&["-s", "rules"], 1, "pfctl: /dev/pf: Permission denied\n");
    let mut pf = Pf::new(&mut fake, opts(&dir));
    let b: &mut dyn Backend = &mut pf;
    let err = b.apply(&ruleset(&[], 443)).unwrap_err();
    assert!(matches!(err, Error::Pf(_)));
    assert_eq!(
        err.to_string(),
        "`pfctl -s rules` failed (exit status 1): pfctl: /dev/pf: Permission denied"
    );
}
