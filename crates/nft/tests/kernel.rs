//! The nftables backend against the real kernel. Each test runs in its own
//! network namespace (the `Nft` socket is opened inside it), so nothing
//! here touches the host's firewall, and tests run in parallel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use egress_core::allowlist::{parse_entry, parse_host};
use egress_core::config::{Action, Config};
use egress_core::diff::{ChangeKind, LiveElements};
use egress_core::policy::{self, AddressAnswer, Answers};
use egress_core::ruleset::{AddrRange, ElementKey, Elements, Layout, LogSpec, Ruleset, SetId};
use egress_core::{Entry, PortRange, Proto};
use egress_nft::{ApplyMode, LiveTable, Nft, NftError};
use testkit::errno::EHOSTUNREACH;
use testkit::{require_root, tcp, udp, Netns, Probe, Servers, Topology, BLOCKED_TIMEOUT};

/// The interface the layouts filter (it need not exist).
const IFACE: &str = "oc-in0";

/// Runs `f` with a fresh namespace and an `Nft` socket opened inside it.
fn in_netns<T: Send>(tag: &str, f: impl FnOnce(&Netns, &mut Nft) -> T + Send) -> T {
    require_root();
    let ns = Netns::new(tag);
    ns.run(|| {
        let mut nft = Nft::new().expect("open the nf_tables socket");
        f(&ns, &mut nft)
    })
}

/// A config with a table unique to the test and the test ranges allowed
/// as private answers (hostnames here resolve into them).
fn config(tag: &str) -> Config {
    let text = format!(
        "[network]\nhost_ports = [\"tcp/8080\", \"udp/5000-5010\"]\n[firewall]\ntable = \"oc_k_{tag}_{}\"\nallow_private = [\"198.18.0.0/15\", \"2001:db8::/32\"]\n",
        std::process::id()
    );
    Config::parse(Path::new("/test/egressd.toml"), &text).expect("valid test config")
}

fn layout(config: &Config) -> Layout {
    policy::layout(config, vec![IFACE.to_string()])
}

fn entries(list: &[&str]) -> Vec<Entry> {
    list.iter()
        .map(|s| parse_entry(s).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `host -> [(address, lifetime)]`.
fn answers(list: &[(&str, &str, Duration)]) -> Answers {
    let mut a = Answers::new();
    for (host, addr, lifetime) in list {
        a.entry(parse_host(host).unwrap())
            .or_default()
            .push(AddressAnswer {
                addr: ip(addr),
                lifetime: *lifetime,
            });
    }
    a
}

const DNS: [&str; 2] = ["198.18.1.53", "2001:db8:1::53"];

/// The ruleset for `entries` and `answers` (DNS servers [`DNS`]).
fn ruleset(config: &Config, list: &[&str], answers: &Answers) -> Ruleset {
    let dns: Vec<IpAddr> = DNS.iter().map(|s| ip(s)).collect();
    let out = policy::desired_elements(
        &entries(list),
        answers,
        &dns,
        &config.firewall.allow_private,
    );
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    Ruleset {
        layout: layout(config),
        elements: out.elements,
    }
}

fn svc(addr: &str, proto: Proto, ports: (u16, u16)) -> ElementKey {
    ElementKey::Service {
        addr: AddrRange::single(ip(addr)),
        proto,
        ports: PortRange {
            start: ports.0,
            end: ports.1,
        },
    }
}

type View = BTreeMap<(SetId, ElementKey), Option<Duration>>;

fn desired_view(e: &Elements) -> View {
    let mut v = View::new();
    for set in SetId::ALL {
        for (k, a) in e.set(set) {
            // The backend writes the desired timeout plus the refresh slack.
            v.insert((set, *k), a.timeout.map(egress_core::diff::kernel_timeout));
        }
    }
    v
}

fn live_view(e: &LiveElements) -> View {
    let mut v = View::new();
    for set in SetId::ALL {
        for (k, a) in e.set(set) {
            v.insert((set, *k), a.timeout);
        }
    }
    v
}

/// Reads the table back and checks that its layout matches and that its
/// elements are exactly the desired ones, with the desired timeouts.
#[track_caller]
fn assert_live_is(nft: &mut Nft, rs: &Ruleset) -> LiveTable {
    let live = nft
        .read(&rs.layout)
        .expect("read the table")
        .unwrap_or_else(|| panic!("table {} is missing", rs.layout.table));
    assert!(
        live.layout_matches,
        "layout drift after apply: {:?}",
        live.drift
    );
    assert_eq!(live.drift, None);
    let (want, got) = (desired_view(&rs.elements), live_view(&live.elements));
    if want != got {
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(v))
            .collect();
        panic!(
            "live elements differ from the desired ones\nmissing or other timeout: {missing:#?}\nunexpected: {extra:#?}"
        );
    }
    live
}

fn nft_list(ns: &Netns, table: &str) -> String {
    ns.exec_ok(["nft", "list", "table", "inet", table])
}

/// Runs an nft command (one argument, nft syntax) in the namespace.
fn nft_cmd(ns: &Netns, cmd: &str) {
    ns.exec_ok(["nft", cmd]);
}

/// Checks that `needles` occur in `hay` in this order.
#[track_caller]
fn assert_in_order(hay: &str, needles: &[&str]) {
    let mut from = 0;
    for n in needles {
        match hay[from..].find(n) {
            Some(i) => from += i + n.len(),
            None => panic!("{n:?} missing (or out of order) in:\n{hay}"),
        }
    }
}

const BASIC: &[&str] = &[
    "198.18.1.10:443",
    "198.18.1.11",
    "198.18.1.12:5353/udp",
    "198.18.1.13:8000-8010",
    "[2001:db8:1::10]:443",
    "2001:db8:1::11",
    "api.oc.test:443",
];

fn basic_answers() -> Answers {
    answers(&[
        ("api.oc.test", "198.18.1.20", Duration::from_secs(600)),
        ("api.oc.test", "2001:db8:1::20", Duration::from_secs(300)),
    ])
}

#[test]
fn apply_then_read_back_gives_the_desired_table() {
    in_netns("readback", |ns, nft| {
        let cfg = config("readback");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        let table = &rs.layout.table;
        assert!(nft.read(&rs.layout).unwrap().is_none(), "fresh namespace");

        let report = nft.apply(&rs).expect("apply");
        assert_eq!(report.mode, ApplyMode::Full);
        assert!(
            report
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("does not exist"),
            "{:?}",
            report.reason
        );
        assert_eq!(report.diff.count(ChangeKind::Added), rs.elements.len());
        assert_eq!(report.diff.changes.len(), rs.elements.len());
        assert!(report.element_messages >= 1 && report.element_messages < report.messages);

        let live = assert_live_is(nft, &rs);
        assert_eq!((live.denied_packets, live.denied_bytes), (0, 0));
        // Timed elements: created with their timeout, expiring within it.
        let timed = svc("198.18.1.20", Proto::Tcp, (443, 443));
        let (_, attrs) = live
            .elements
            .set(SetId::Svc4)
            .find(|(k, _)| **k == timed)
            .expect("resolved element is live");
        // 600 s wanted, written with the 6 s refresh slack on top.
        assert_eq!(attrs.timeout, Some(Duration::from_secs(606)));
        let left = attrs.expires.expect("a timed element expires");
        assert!(
            left <= Duration::from_secs(606) && left > Duration::from_secs(596),
            "{left:?}"
        );
        let (_, perm) = live
            .elements
            .set(SetId::Svc4)
            .find(|(k, _)| **k == svc("198.18.1.10", Proto::Tcp, (443, 443)))
            .expect("literal element is live");
        assert_eq!((perm.timeout, perm.expires), (None, None));

        let text = nft_list(ns, table);
        assert_in_order(
            &text,
            &[
                &format!("table inet {table} {{"),
                &format!("comment \"{}\"", rs.layout.table_comment()),
                "set allow_v4 {",
                "type ipv4_addr . inet_proto . inet_service",
                "flags interval,timeout",
                "198.18.1.10 . tcp . 443 comment \"198.18.1.10:443\"",
                "198.18.1.12 . udp . 5353 comment \"198.18.1.12:5353/udp\"",
                "198.18.1.13 . tcp . 8000-8010 comment \"198.18.1.13:8000-8010\"",
                "198.18.1.20 . tcp . 443 timeout 10m6s expires",
                "comment \"api.oc.test\"",
                "set allow_v6 {",
                "2001:db8:1::10 . tcp . 443 comment \"[2001:db8:1::10]:443\"",
                "2001:db8:1::20 . tcp . 443 timeout 5m3s expires",
                "set allow_all_ports_v4 {",
                "198.18.1.11 comment \"198.18.1.11\"",
                "set allow_all_ports_v6 {",
                "2001:db8:1::11 comment \"2001:db8:1::11\"",
                "set dns_v4 {",
                "198.18.1.53 comment \"dns server\"",
                "set dns_v6 {",
                "2001:db8:1::53 comment \"dns server\"",
                "chain forward {",
                "type filter hook forward priority filter - 10; policy accept;",
                "iifname \"oc-in0\" oifname \"oc-in0\" jump deny comment \"containers of the network: denied\"",
                "iifname \"oc-in0\" jump egress comment \"traffic from the agent network\"",
                "chain input {",
                "type filter hook input priority filter - 10; policy accept;",
                "iifname \"oc-in0\" jump host comment \"traffic from the agent network to the host\"",
                "chain egress {",
                "ct state established,related accept",
                "ip daddr @dns_v4 udp dport 53 accept",
                "ip daddr @dns_v4 tcp dport 53 accept",
                "ip6 daddr @dns_v6 udp dport 53 accept",
                "ip6 daddr @dns_v6 tcp dport 53 accept",
                "ip daddr . meta l4proto . th dport @allow_v4 accept",
                "ip6 daddr . meta l4proto . th dport @allow_v6 accept",
                "meta l4proto tcp ip daddr @allow_all_ports_v4 accept",
                "meta l4proto udp ip daddr @allow_all_ports_v4 accept",
                "meta l4proto tcp ip6 daddr @allow_all_ports_v6 accept",
                "meta l4proto udp ip6 daddr @allow_all_ports_v6 accept",
                "jump deny comment \"everything else is denied\"",
                "chain host {",
                "ct state established,related accept",
                "ip daddr @dns_v4 udp dport 53 accept",
                "tcp dport 8080 accept comment \"host port tcp/8080\"",
                "udp dport 5000-5010 accept comment \"host port udp/5000-5010\"",
                "jump deny comment \"everything else is denied\"",
                "chain deny {",
                "limit rate 5/second burst 10 packets log prefix \"openclaw-egress deny: \"",
                "meta l4proto tcp counter packets 0 bytes 0 reject with tcp reset",
                "counter packets 0 bytes 0 reject with icmpx admin-prohibited",
            ],
        );
        // Nothing else: a set holds exactly its elements.
        assert_eq!(text.matches(" . tcp . ").count(), 5, "{text}");
    });
}

#[test]
fn netlink_table_lists_like_the_rendered_text_loaded_by_nft() {
    // What `openclaw-egress show` prints, loaded by nft itself in another
    // namespace, must list exactly like the table built over netlink.
    let cfg = config("render");
    let rs = ruleset(&cfg, BASIC, &answers(&[]));
    let ours = in_netns("render-a", |ns, nft| {
        nft.apply(&rs).expect("apply");
        nft_list(ns, &rs.layout.table)
    });
    require_root();
    let other = Netns::new("render-b");
    let file = testkit::TempDir::new("render");
    let path = file.write("ruleset.nft", &egress_core::render::ruleset_text(&rs));
    other.exec_ok(["nft", "-f", path.to_str().unwrap()]);
    let theirs = nft_list(&other, &rs.layout.table);
    assert_eq!(
        ours, theirs,
        "netlink table (left) and nft -f of the rendered text (right) differ"
    );
}

#[test]
fn reapply_sends_nothing_and_an_edit_sends_only_its_elements() {
    in_netns("diff", |_ns, nft| {
        let cfg = config("diff");
        let a = answers(&[]);
        let base: Vec<&str> = BASIC[..6].to_vec();
        let rs = ruleset(&cfg, &base, &a);
        assert_eq!(nft.apply(&rs).unwrap().mode, ApplyMode::Full);

        let again = nft.apply(&rs).unwrap();
        assert_eq!(again.mode, ApplyMode::Unchanged);
        assert_eq!(
            (again.messages, again.element_messages, again.bytes),
            (0, 0, 0)
        );
        assert!(again.diff.is_empty() && again.diff.changes.is_empty());
        let (live, reason, d) = nft.plan(&rs).unwrap();
        assert!(live.is_some() && reason.is_none() && d.is_empty());

        // One entry more: one element added, nothing else sent.
        let mut more = base.clone();
        more.push("198.18.1.14:22");
        let rs2 = ruleset(&cfg, &more, &a);
        let r = nft.apply(&rs2).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!((r.messages, r.element_messages), (1, 1));
        assert_eq!(r.diff.changes.len(), 1, "{:?}", r.diff.changes);
        let (kind, c) = &r.diff.changes[0];
        assert_eq!(*kind, ChangeKind::Added);
        assert_eq!(
            (c.set, c.key),
            (SetId::Svc4, svc("198.18.1.14", Proto::Tcp, (22, 22)))
        );
        assert_live_is(nft, &rs2);

        // One entry fewer: one element deleted.
        let fewer: Vec<&str> = more
            .iter()
            .copied()
            .filter(|e| *e != "198.18.1.10:443")
            .collect();
        let rs3 = ruleset(&cfg, &fewer, &a);
        let r = nft.apply(&rs3).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!((r.messages, r.element_messages), (1, 1));
        assert_eq!(r.diff.changes.len(), 1, "{:?}", r.diff.changes);
        assert_eq!(r.diff.changes[0].0, ChangeKind::Removed);
        assert_eq!(
            r.diff.changes[0].1.key,
            svc("198.18.1.10", Proto::Tcp, (443, 443))
        );
        assert_live_is(nft, &rs3);

        // One entry changed (another port): one delete and one add.
        let changed: Vec<&str> = fewer
            .iter()
            .map(|e| {
                if *e == "198.18.1.14:22" {
                    "198.18.1.14:23"
                } else {
                    e
                }
            })
            .collect();
        let rs4 = ruleset(&cfg, &changed, &a);
        let r = nft.apply(&rs4).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!((r.messages, r.element_messages), (2, 2));
        let kinds: Vec<(ChangeKind, ElementKey)> =
            r.diff.changes.iter().map(|(k, c)| (*k, c.key)).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    ChangeKind::Removed,
                    svc("198.18.1.14", Proto::Tcp, (22, 22))
                ),
                (ChangeKind::Added, svc("198.18.1.14", Proto::Tcp, (23, 23))),
            ]
        );
        assert_live_is(nft, &rs4);

        // A change of an interval (all-ports) element: rbtree start and
        // end elements go in the one message of its set.
        let wider: Vec<&str> = changed
            .iter()
            .map(|e| {
                if *e == "198.18.1.11" {
                    "198.18.2.0/24"
                } else {
                    e
                }
            })
            .collect();
        let rs5 = ruleset(&cfg, &wider, &a);
        let r = nft.apply(&rs5).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!(r.diff.changes.len(), 2, "{:?}", r.diff.changes);
        assert_eq!(r.element_messages, 2);
        assert_live_is(nft, &rs5);
        assert_eq!(nft.apply(&rs5).unwrap().mode, ApplyMode::Unchanged);
    });
}

#[test]
fn ten_thousand_entries_load_in_one_batch_and_one_edit_sends_one_element() {
    in_netns("bulk", |_ns, nft| {
        let cfg = config("bulk");
        // Literal addresses spread over 198.18.0.0/15, one port each.
        let list: Vec<String> = (0..10_000u32)
            .map(|i| {
                let a = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + 1 + i * 13;
                format!("{}:{}", std::net::Ipv4Addr::from(a), 1000 + i % 3000)
            })
            .collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let rs = ruleset(&cfg, &refs, &answers(&[]));
        assert_eq!(rs.elements.count(SetId::Svc4), 10_000);

        let t = Instant::now();
        let r = nft.apply(&rs).expect("apply 10,000 entries");
        let took = t.elapsed();
        assert_eq!(r.mode, ApplyMode::Full);
        assert_eq!(r.diff.count(ChangeKind::Added), 10_002);
        // At most 128 keys per element message, all in one batch.
        assert!(
            r.element_messages >= 10_000 / 128 && r.element_messages <= 10_000 / 128 + 6,
            "{} element messages",
            r.element_messages
        );
        eprintln!(
            "10,000 entries: {} messages, {} bytes, {:?}",
            r.messages, r.bytes, took
        );
        assert_live_is(nft, &rs);

        let mut more = refs.clone();
        more.push("198.19.255.254:443");
        let rs2 = ruleset(&cfg, &more, &answers(&[]));
        let r = nft.apply(&rs2).expect("apply one more");
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!((r.messages, r.element_messages), (1, 1));
        assert_eq!(r.diff.changes.len(), 1);
        assert_eq!(
            r.diff.changes[0].1.key,
            svc("198.19.255.254", Proto::Tcp, (443, 443))
        );
        let live = assert_live_is(nft, &rs2);
        assert_eq!(live.elements.len(), 10_003);
    });
}

/// Finds the handle of the rule whose line contains `needle` in
/// `nft -a list chain inet TABLE CHAIN`.
fn rule_handle(ns: &Netns, table: &str, chain: &str, needle: &str) -> String {
    let text = ns.exec_ok(["nft", "-a", "list", "chain", "inet", table, chain]);
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{text}"));
    line.rsplit("# handle ").next().unwrap().trim().to_string()
}

#[test]
fn a_deleted_rule_is_drift_and_apply_restores_the_table() {
    in_netns("delrule", |ns, nft| {
        let cfg = config("delrule");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        let table = &rs.layout.table;
        nft.apply(&rs).unwrap();
        let before = nft_list(ns, table);

        let h = rule_handle(ns, table, "egress", "@allow_v4 accept");
        nft_cmd(ns, &format!("delete rule inet {table} egress handle {h}"));
        let live = nft.read(&rs.layout).unwrap().unwrap();
        assert!(!live.layout_matches);
        let drift = live.drift.unwrap_or_default();
        assert!(drift.contains("chain egress has"), "{drift}");
        // The elements are still there; only the layout drifted.
        assert_eq!(live_view(&live.elements), desired_view(&rs.elements));

        let r = nft.apply(&rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Full);
        assert!(r.reason.unwrap_or_default().contains("chain egress has"));
        assert_live_is(nft, &rs);
        let after = nft_list(ns, table);
        assert!(after.contains("@allow_v4 accept"), "{after}");
        assert_eq!(strip_expiry(&after), strip_expiry(&before));
        assert_eq!(nft.apply(&rs).unwrap().mode, ApplyMode::Unchanged);
    });
}

#[test]
fn an_edited_rule_that_keeps_its_comment_is_drift() {
    // The table comment promises "edits here are overwritten". An edit made
    // the usual way (list, change, load with nft -f) keeps the comment.
    in_netns("editrule", |ns, nft| {
        let cfg = config("editrule");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        let t = &rs.layout.table;
        nft.apply(&rs).unwrap();
        let h = rule_handle(ns, t, "deny", "deny: tcp reset");
        nft_cmd(
            ns,
            &format!(
                "replace rule inet {t} deny handle {h} meta l4proto tcp accept comment \"deny: tcp reset\""
            ),
        );
        let edited = nft_list(ns, t);
        assert!(edited.contains("meta l4proto tcp accept comment \"deny: tcp reset\""));
        let live = nft.read(&rs.layout).unwrap().unwrap();
        assert!(
            !live.layout_matches,
            "a deny rule turned into accept is not seen as drift"
        );
        assert_eq!(nft.apply(&rs).unwrap().mode, ApplyMode::Full);
        assert!(nft_list(ns, t).contains("reject with tcp reset"));
    });
}

/// `nft list` output without the `expires ...` countdowns.
fn strip_expiry(text: &str) -> String {
    text.split(" expires ")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                // Drop the duration token that followed "expires".
                let cut = part.find([' ', ',', '\n']).unwrap_or(part.len());
                part[cut..].to_string()
            }
        })
        .collect()
}

#[test]
fn a_flushed_ruleset_is_reloaded_whole() {
    in_netns("flushall", |ns, nft| {
        let cfg = config("flushall");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        nft.apply(&rs).unwrap();
        nft_cmd(ns, "flush ruleset");
        assert!(nft.read(&rs.layout).unwrap().is_none());
        let (live, reason, d) = nft.plan(&rs).unwrap();
        assert!(live.is_none());
        assert_eq!(reason.as_deref(), Some("the table does not exist"));
        assert_eq!(d.count(ChangeKind::Added), rs.elements.len());
        let r = nft.apply(&rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Full);
        assert_live_is(nft, &rs);
    });
}

#[test]
fn foreign_chains_rules_sets_and_policies_are_drift_and_removed() {
    in_netns("foreign", |ns, nft| {
        let cfg = config("foreign");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        let t = rs.layout.table.clone();
        nft.apply(&rs).unwrap();
        let clean = strip_expiry(&nft_list(ns, &t));

        let cases: [(String, &str); 5] = [
            (format!("add chain inet {t} sneaky"), "unexpected chain sneaky"),
            (
                format!("insert rule inet {t} egress accept"),
                "chain egress has",
            ),
            (
                format!("add rule inet {t} forward ip daddr 198.18.9.9 accept"),
                "chain forward has",
            ),
            (
                format!("add set inet {t} extra {{ type ipv4_addr; }}"),
                "unexpected set extra",
            ),
            (
                format!(
                    "add chain inet {t} forward {{ type filter hook forward priority -10; policy drop; }}"
                ),
                "chain forward has another hook or policy",
            ),
        ];
        for (cmd, want) in &cases {
            nft_cmd(ns, cmd);
            let live = nft.read(&rs.layout).unwrap().unwrap();
            assert!(!live.layout_matches, "{cmd}: no drift seen");
            let drift = live.drift.unwrap_or_default();
            assert!(
                drift.contains(want),
                "{cmd}: drift {drift:?} lacks {want:?}"
            );
            let r = nft.apply(&rs).unwrap();
            assert_eq!(r.mode, ApplyMode::Full, "{cmd}");
            assert_live_is(nft, &rs);
            let now = strip_expiry(&nft_list(ns, &t));
            assert_eq!(
                now, clean,
                "{cmd}: the table is not back to the desired one"
            );
        }
    });
}

#[test]
fn flushed_or_edited_set_elements_are_put_back_by_an_element_diff() {
    in_netns("flushset", |ns, nft| {
        let cfg = config("flushset");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        let t = rs.layout.table.clone();
        nft.apply(&rs).unwrap();

        for set in ["allow_v4", "allow_all_ports_v6", "dns_v4"] {
            nft_cmd(ns, &format!("flush set inet {t} {set}"));
            let id = SetId::from_name(set).unwrap();
            let live = nft.read(&rs.layout).unwrap().unwrap();
            assert!(live.layout_matches, "{set}: elements are not layout");
            assert_eq!(live.elements.set(id).count(), 0, "{set} was flushed");
            let r = nft.apply(&rs).unwrap();
            assert_eq!(r.mode, ApplyMode::Elements, "{set}");
            assert_eq!(
                r.diff.count(ChangeKind::Added),
                rs.elements.count(id),
                "{set}"
            );
            assert_eq!(r.diff.changes.len(), rs.elements.count(id), "{set}");
            assert_live_is(nft, &rs);
        }

        // An element removed and a foreign one added by hand.
        nft_cmd(
            ns,
            &format!("delete element inet {t} dns_v4 {{ 198.18.1.53 }}"),
        );
        nft_cmd(
            ns,
            &format!("add element inet {t} allow_all_ports_v4 {{ 198.18.9.0/24 }}"),
        );
        let r = nft.apply(&rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        let mut got: Vec<(ChangeKind, SetId, String)> = r
            .diff
            .changes
            .iter()
            .map(|(k, c)| (*k, c.set, c.key.to_string()))
            .collect();
        got.sort_by_key(|(_, s, k)| (*s, k.clone()));
        assert_eq!(
            got,
            vec![
                (
                    ChangeKind::Removed,
                    SetId::Any4,
                    "198.18.9.0/24".to_string()
                ),
                (ChangeKind::Added, SetId::Dns4, "198.18.1.53".to_string()),
            ]
        );
        assert_live_is(nft, &rs);
    });
}

#[test]
fn a_refused_batch_leaves_the_previous_table_intact() {
    in_netns("refused", |ns, nft| {
        let cfg = config("refused");
        let rs = ruleset(&cfg, BASIC, &answers(&[]));
        let t = rs.layout.table.clone();
        nft.apply(&rs).unwrap();
        let before = nft_list(ns, &t);

        // NF_LOG_PREFIXLEN is 128: the kernel refuses a longer prefix.
        let mut bad = rs.clone();
        bad.layout.log = Some(LogSpec {
            rate: 5,
            burst: 10,
            prefix: "x".repeat(200),
        });
        bad.elements = ruleset(&cfg, &["198.18.1.99:1"], &answers(&[])).elements;
        let err = nft
            .apply(&bad)
            .expect_err("the kernel must refuse the batch");
        let shown = err.to_string();
        match &err {
            NftError::Kernel { op, .. } => {
                assert!(op.starts_with("add rule deny"), "{op}");
                assert!(op.contains("log denied"), "{op}");
            }
            other => panic!("expected NftError::Kernel, got {other:?}"),
        }
        assert!(shown.contains("add rule deny"), "{shown}");

        let live = assert_live_is(nft, &rs);
        assert!(live.layout_matches);
        assert_eq!(
            nft_list(ns, &t),
            before,
            "the refused batch changed the table"
        );
        assert_eq!(nft.apply(&rs).unwrap().mode, ApplyMode::Unchanged);
    });
}

#[test]
fn another_layout_is_reloaded_whole_and_apply_full_forces_a_reload() {
    in_netns("relayout", |ns, nft| {
        let mut cfg = config("relayout");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        nft.apply(&rs).unwrap();

        cfg.firewall.action = Action::Drop;
        let drop_rs = ruleset(&cfg, BASIC, &basic_answers());
        let r = nft.apply(&drop_rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Full);
        let reason = r.reason.unwrap_or_default();
        assert!(reason.contains("fingerprint"), "{reason}");
        assert_live_is(nft, &drop_rs);
        let text = nft_list(ns, &drop_rs.layout.table);
        assert!(text.contains("counter packets 0 bytes 0 drop"), "{text}");
        assert!(!text.contains("reject"), "{text}");
        // The old layout now reads as drifted.
        assert!(!nft.read(&rs.layout).unwrap().unwrap().layout_matches);

        let r = nft.apply_full(&drop_rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Full);
        assert_eq!(r.reason.as_deref(), Some("forced"));
        assert_live_is(nft, &drop_rs);
    });
}

#[test]
fn a_timed_element_disappears_from_the_kernel_by_itself() {
    in_netns("expire", |ns, nft| {
        let cfg = config("expire");
        let a = answers(&[("short.oc.test", "198.18.1.30", Duration::from_secs(2))]);
        let rs = ruleset(&cfg, &["short.oc.test:443", "198.18.1.10:443"], &a);
        nft.apply(&rs).unwrap();
        let short = (SetId::Svc4, svc("198.18.1.30", Proto::Tcp, (443, 443)));
        let live = assert_live_is(nft, &rs);
        assert_eq!(
            live_view(&live.elements).get(&short),
            // 2 s wanted plus the 1 s refresh slack.
            Some(&Some(Duration::from_secs(3)))
        );

        let start = Instant::now();
        loop {
            let live = nft.read(&rs.layout).unwrap().unwrap();
            let view = live_view(&live.elements);
            if !view.contains_key(&short) {
                assert!(
                    view.contains_key(&(SetId::Svc4, svc("198.18.1.10", Proto::Tcp, (443, 443)))),
                    "the permanent element expired too"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(6),
                "the 3 s element is still live after {:?}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1500),
            "expired too early: {:?}",
            start.elapsed()
        );
        assert!(!nft_list(ns, &rs.layout.table).contains("198.18.1.30"));
        // Applying again puts it back, as an element diff.
        let r = nft.apply(&rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!(r.diff.count(ChangeKind::Added), 1);
    });
}

#[test]
fn an_element_running_out_early_is_refreshed_by_delete_and_add() {
    in_netns("refresh", |_ns, nft| {
        let cfg = config("refresh");
        let twenty = Duration::from_secs(20);
        let a = answers(&[("api.oc.test", "198.18.1.40", twenty)]);
        let rs = ruleset(&cfg, &["api.oc.test:443"], &a);
        let key = svc("198.18.1.40", Proto::Tcp, (443, 443));
        let expires = |nft: &mut Nft| {
            let live = nft.read(&rs.layout).unwrap().unwrap();
            let (_, attrs) = live
                .elements
                .set(SetId::Svc4)
                .find(|(k, _)| **k == key)
                .map(|(k, a)| (*k, *a))
                .expect("element is live");
            (attrs.timeout, attrs.expires.expect("timed element"))
        };
        nft.apply(&rs).unwrap();
        // Written as 21 s (20 s + 1 s slack): a re-apply at once sends nothing.
        assert_eq!(nft.apply(&rs).unwrap().mode, ApplyMode::Unchanged);

        std::thread::sleep(Duration::from_millis(2500));
        let (_, left) = expires(nft);
        // Now it would close before the desired 20 s: refreshed.
        assert!(left < Duration::from_millis(19_000), "{left:?}");
        let r = nft.apply(&rs).unwrap();
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_eq!(r.diff.count(ChangeKind::Refreshed), 1);
        assert_eq!(r.diff.changes.len(), 1);
        assert_eq!((r.diff.delete.len(), r.diff.add.len()), (1, 1));
        assert_eq!((r.messages, r.element_messages), (2, 2));
        let (timeout, left) = expires(nft);
        assert_eq!(timeout, Some(twenty + Duration::from_secs(1)));
        assert!(
            left > Duration::from_millis(20_000),
            "not refreshed: {left:?}"
        );

        // A longer desired lifetime is a refresh too.
        let a40 = answers(&[("api.oc.test", "198.18.1.40", twenty * 2)]);
        let rs40 = ruleset(&cfg, &["api.oc.test:443"], &a40);
        let r = nft.apply(&rs40).unwrap();
        assert_eq!(r.diff.count(ChangeKind::Refreshed), 1);
        assert_live_is(nft, &rs40);
    });
}

#[test]
fn interval_edge_cases_load_and_read_back_equal() {
    in_netns("intervals", |ns, nft| {
        let cfg = config("intervals");
        let list = [
            // Overlapping and adjacent all-ports ranges.
            "198.18.4.0/24",
            "198.18.4.128/25",
            "198.18.5.0/24",
            "198.18.6.7",
            "198.18.6.8",
            // Ranges reaching the top of the address space (no end element).
            "255.255.255.0/24",
            "ffff:ffff:ffff:ffff::/64",
            "2001:db8:4::/48",
            "2001:db8:4:8000::/49",
            "2001:db8:5::/48",
            // Whole address spaces and edge ports in the service sets.
            "0.0.0.0/0:9999",
            "[::/0]:9999",
            "198.18.7.0/24:80-90",
            "198.18.7.128/25:85-100",
            "198.18.7.1:60000-65535",
            "198.18.7.2:1",
            "255.255.255.255:65535/udp",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1-65535",
        ];
        let rs = ruleset(&cfg, &list, &answers(&[]));
        nft.apply(&rs).expect("apply interval edge cases");
        assert_live_is(nft, &rs);
        let text = nft_list(ns, &rs.layout.table);
        for want in [
            "255.255.255.0/24",
            "ffff:ffff:ffff:ffff::/64",
            // The /0s are cut where other entries of their protocol start
            // and end (the kernel refuses overlaps).
            "0.0.0.0-198.18.6.255 . tcp . 9999",
            "198.18.8.0-255.255.255.255 . tcp . 9999",
            "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe . tcp . 9999",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff . tcp . 10000-65535",
            "198.18.7.128/25 . tcp . 85-90",
            "198.18.4.0/25",
            "198.18.7.1 . tcp . 60000-65535",
            "255.255.255.255 . udp . 65535",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }

        // Then everything as one /0 per family, as an element diff (every
        // old interval deleted, the whole space added).
        let rs2 = ruleset(&cfg, &["0.0.0.0/0", "::/0", "198.18.7.2:1"], &answers(&[]));
        let r = nft.apply(&rs2).expect("apply /0");
        assert_eq!(r.mode, ApplyMode::Elements);
        assert_live_is(nft, &rs2);
        // And back.
        nft.apply(&rs).expect("apply the edge cases again");
        assert_live_is(nft, &rs);
    });
}

#[test]
fn flush_removes_the_table_once() {
    in_netns("flush", |ns, nft| {
        let cfg = config("flush");
        let rs = ruleset(&cfg, BASIC, &basic_answers());
        nft.apply(&rs).unwrap();
        assert!(
            nft.flush(&rs.layout.table).unwrap(),
            "first flush finds the table"
        );
        assert!(nft.read(&rs.layout).unwrap().is_none());
        assert!(
            ns.nft_table(&rs.layout.table).is_none(),
            "the table is still listed"
        );
        assert!(
            !nft.flush(&rs.layout.table).unwrap(),
            "second flush finds nothing"
        );
        let listed = ns.exec_ok(["nft", "list", "ruleset"]);
        assert!(listed.trim().is_empty(), "{listed}");
    });
}

#[test]
fn the_deny_counters_count_blocked_packets() {
    require_root();
    let topo = Topology::builder().tag("kcount").ingress(IFACE).build();
    let _servers = Servers::standard(&topo.server);
    let cfg = config("count");
    let rs = ruleset(&cfg, &["198.18.1.10:443"], &answers(&[]));
    let read = || {
        topo.router.run(|| {
            let mut nft = Nft::new().unwrap();
            nft.read(&rs.layout).unwrap().expect("table")
        })
    };
    topo.router.run(|| Nft::new().unwrap().apply(&rs).unwrap());
    let before = read();
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            (tcp("198.18.1.14:443"), Probe::Refused),
            (tcp("198.18.1.10:80"), Probe::Refused),
            (udp("198.18.1.14:5000"), Probe::Unreachable(EHOSTUNREACH)),
        ],
        BLOCKED_TIMEOUT,
    );
    let after = read();
    // Three packets were denied (two SYNs, one datagram); IPv6 chatter of
    // the client (router solicitations, MLD) may add to the count.
    let packets = after.denied_packets - before.denied_packets;
    assert!(packets >= 3, "{packets} denied packets counted");
    // IPv4 SYNs are at least 40 bytes, the datagram at least 28.
    let bytes = after.denied_bytes - before.denied_bytes;
    assert!(bytes >= 40 + 40 + 28, "{bytes} denied bytes counted");
}
