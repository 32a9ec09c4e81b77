use super::*;
use crate::allowlist::parse_entry;

fn host(s: &str) -> HostName {
    crate::allowlist::parse_host(s).unwrap()
}

fn entries(list: &[&str]) -> Vec<Entry> {
    list.iter().map(|s| parse_entry(s).unwrap()).collect()
}

fn ans(addrs: &[(&str, u64)]) -> Vec<AddressAnswer> {
    addrs
        .iter()
        .map(|(a, s)| AddressAnswer {
            addr: a.parse().unwrap(),
            lifetime: Duration::from_secs(*s),
        })
        .collect()
}

fn texts(out: &PolicyOutcome, set: SetId) -> Vec<String> {
    out.elements
        .set(set)
        .map(|(k, a)| match a.timeout {
            Some(t) => format!("{k} {}s [{}]", t.as_secs(), a.comment),
            None => format!("{k} [{}]", a.comment),
        })
        .collect()
}

#[test]
fn special_ranges_are_recognised() {
    let special = [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2002:a00:1::1",
        "2002:7f00:1::1",
        "2001:db8::1",
        "::127.0.0.1",
        // Teredo with client 10.0.0.1 (bits inverted: f5ff:fffe).
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ];
    for a in special {
        assert!(
            special_range(a.parse().unwrap()).is_some(),
            "{a} should be special"
        );
    }
    let public = [
        "1.1.1.1",
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "169.253.255.255",
        "2606:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "::ffff:8.8.8.8",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ];
    for a in public {
        assert_eq!(
            special_range(a.parse().unwrap()),
            None,
            "{a} should be public"
        );
    }
}

#[test]
fn embedded_ipv4_forms_name_the_form() {
    let cases = [
        (
            "::ffff:10.0.0.1",
            "IPv4-mapped form of a special IPv4 range",
        ),
        (
            "::127.0.0.1",
            "IPv4-compatible form of a special IPv4 range",
        ),
        ("64:ff9b::a9fe:a9fe", "NAT64 form of a special IPv4 range"),
        ("2002:a00:1::1", "6to4 form of a special IPv4 range"),
        (
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "Teredo form of a special IPv4 range",
        ),
        // Teredo with a public client but server 10.0.0.1.
        (
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",
            "Teredo form of a special IPv4 range",
        ),
        ("2001:db8::1", "documentation (2001:db8::/32)"),
    ];
    for (a, reason) in cases {
        assert_eq!(special_range(a.parse().unwrap()), Some(reason), "{a}");
    }
}

/// Every name fits when it can; otherwise as many as fit, then "+N more",
/// and the comment never exceeds the limit by more than that suffix.
#[test]
fn comments_cut_at_the_limit() {
    let label = |names: &[String]| Label {
        lifetime: Lifetime::Permanent,
        names: names.iter().cloned().collect(),
    };
    let name = |i: usize, len: usize| format!("{i:02}{}", "x".repeat(len - 2));
    // Two names of 59 bytes: 59 + 2 + 59 = 120 fits exactly.
    let fits = [name(0, 59), name(1, 59)];
    assert_eq!(label(&fits).attrs().comment, fits.join(", "));
    // One byte more and the last name does not fit: "+1 more".
    let over = [name(0, 59), name(1, 60)];
    assert_eq!(label(&over).attrs().comment, format!("{} +1 more", over[0]));
    // Three names: the second fits alone, but not with room for "+1 more".
    let three = [name(0, 59), name(1, 55), name(2, 3)];
    assert_eq!(
        label(&three).attrs().comment,
        format!("{} +2 more", three[0])
    );
    let few = [name(0, 50), name(1, 50), name(2, 3)];
    assert_eq!(label(&few).attrs().comment, few.join(", "));
}

#[test]
fn hostnames_never_open_private_ranges_but_literals_do() {
    let e = entries(&["api.example.com:443", "10.0.0.0/8:5432"]);
    let mut answers = Answers::new();
    answers.insert(
        host("api.example.com"),
        ans(&[("169.254.169.254", 60), ("10.1.1.1", 60), ("1.2.3.4", 60)]),
    );
    let out = desired_elements(&e, &answers, &[], &[]);
    assert_eq!(out.refused.len(), 2);
    assert!(out.refused[0].reason.contains("link-local"));
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec![
            "1.2.3.4 . tcp . 443 60s [api.example.com]".to_string(),
            "10.0.0.0/8 . tcp . 5432 [10.0.0.0/8:5432]".to_string(),
        ]
    );
}

#[test]
fn allow_private_lets_a_range_through() {
    let e = entries(&["api.example.com:443"]);
    let mut answers = Answers::new();
    answers.insert(
        host("api.example.com"),
        ans(&[("198.18.0.7", 60), ("10.0.0.1", 60)]),
    );
    let allow = ["198.18.0.0/15".parse().unwrap()];
    let out = desired_elements(&e, &answers, &[], &allow);
    assert_eq!(out.refused.len(), 1);
    assert_eq!(out.refused[0].addr.to_string(), "10.0.0.1");
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec!["198.18.0.7 . tcp . 443 60s [api.example.com]"]
    );
}

#[test]
fn mapped_ipv6_answers_count_as_ipv4() {
    let e = entries(&["a.example:443"]);
    let mut answers = Answers::new();
    answers.insert(host("a.example"), ans(&[("::ffff:1.2.3.4", 30)]));
    let out = desired_elements(&e, &answers, &[], &[]);
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec!["1.2.3.4 . tcp . 443 30s [a.example]"]
    );
    assert_eq!(out.elements.count(SetId::Svc6), 0);
}

#[test]
fn unresolved_hosts_are_listed_once_and_get_nothing() {
    let e = entries(&["a.example:443", "a.example:80", "b.example"]);
    let out = desired_elements(&e, &Answers::new(), &[], &[]);
    assert_eq!(out.unresolved, vec![host("a.example"), host("b.example")]);
    assert!(out.elements.is_empty());
}

#[test]
fn bare_entries_go_to_the_all_ports_sets_by_family() {
    let e = entries(&["h.example", "2001:db8::/32", "192.0.2.0/24"]);
    let mut answers = Answers::new();
    answers.insert(
        host("h.example"),
        ans(&[("1.2.3.4", 10), ("2606:4700::1", 20)]),
    );
    let out = desired_elements(&e, &answers, &[], &[]);
    assert_eq!(
        texts(&out, SetId::Any4),
        vec!["1.2.3.4 10s [h.example]", "192.0.2.0/24 [192.0.2.0/24]"]
    );
    assert_eq!(
        texts(&out, SetId::Any6),
        vec![
            "2001:db8::/32 [2001:db8::/32]",
            "2606:4700::1 20s [h.example]"
        ]
    );
}

#[test]
fn overlapping_entries_become_disjoint_pieces() {
    // A host inside a literal CIDR on an overlapping port range.
    let e = entries(&["198.18.0.0/24:440-450", "h.example:445-460"]);
    let mut answers = Answers::new();
    answers.insert(host("h.example"), ans(&[("198.18.0.5", 60)]));
    let allow = ["198.18.0.0/15".parse().unwrap()];
    let out = desired_elements(&e, &answers, &[], &allow);
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec![
            "198.18.0.0-198.18.0.4 . tcp . 440-450 [198.18.0.0/24:440-450]",
            "198.18.0.5 . tcp . 440-444 [198.18.0.0/24:440-450]",
            "198.18.0.5 . tcp . 445-450 [198.18.0.0/24:440-450, h.example]",
            "198.18.0.5 . tcp . 451-460 60s [h.example]",
            "198.18.0.6-198.18.0.255 . tcp . 440-450 [198.18.0.0/24:440-450]",
        ]
    );
}

#[test]
fn lifetimes_merge_to_the_longest_and_permanent_wins() {
    let e = entries(&["a.example:443", "b.example:443", "1.2.3.5:443"]);
    let mut answers = Answers::new();
    answers.insert(host("a.example"), ans(&[("1.2.3.4", 30), ("1.2.3.5", 30)]));
    answers.insert(host("b.example"), ans(&[("1.2.3.4", 90)]));
    let out = desired_elements(&e, &answers, &[], &[]);
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec![
            "1.2.3.4 . tcp . 443 90s [a.example, b.example]",
            "1.2.3.5 . tcp . 443 [1.2.3.5:443, a.example]",
        ]
    );
}

#[test]
fn udp_and_tcp_are_separate_elements() {
    let e = entries(&["1.2.3.4:53/udp", "1.2.3.4:53"]);
    let out = desired_elements(&e, &Answers::new(), &[], &[]);
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec![
            "1.2.3.4 . tcp . 53 [1.2.3.4:53]",
            "1.2.3.4 . udp . 53 [1.2.3.4:53/udp]"
        ]
    );
}

#[test]
fn dns_servers_fill_the_dns_sets() {
    let servers: Vec<IpAddr> = vec![
        "192.0.2.53".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    ];
    let out = desired_elements(&[], &Answers::new(), &servers, &[]);
    assert_eq!(texts(&out, SetId::Dns4), vec!["192.0.2.53 [dns server]"]);
    assert_eq!(texts(&out, SetId::Dns6), vec!["2001:db8::53 [dns server]"]);
}

#[test]
fn whole_address_space_does_not_overflow() {
    let e = entries(&["0.0.0.0/0:443", "[::/0]:443", "255.255.255.255:443"]);
    let out = desired_elements(&e, &Answers::new(), &[], &[]);
    assert_eq!(
        texts(&out, SetId::Svc4),
        vec![
            "0.0.0.0-255.255.255.254 . tcp . 443 [0.0.0.0/0:443]",
            "255.255.255.255 . tcp . 443 [0.0.0.0/0:443, 255.255.255.255:443]",
        ]
    );
    assert_eq!(
        texts(&out, SetId::Svc6),
        vec!["::/0 . tcp . 443 [[::/0]:443]"]
    );
}

#[test]
fn long_comments_are_cut() {
    let names: Vec<String> = (0..40)
        .map(|i| format!("host-number-{i}.example"))
        .collect();
    let e: Vec<Entry> = names
        .iter()
        .map(|n| parse_entry(&format!("{n}:443")).unwrap())
        .collect();
    let mut answers = Answers::new();
    for n in &names {
        answers.insert(host(n), ans(&[("1.2.3.4", 10)]));
    }
    let out = desired_elements(&e, &answers, &[], &[]);
    let (_, attrs) = out.elements.set(SetId::Svc4).next().unwrap();
    assert!(attrs.comment.len() <= 128, "{}", attrs.comment);
    assert!(attrs.comment.ends_with("more"), "{}", attrs.comment);
}

/// Brute force against the sweep: on a small grid, every point must be
/// covered by exactly one output piece iff some input covers it, with the
/// merged label of the inputs covering it.
#[test]
fn cover_matches_brute_force_on_random_rectangles() {
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..300 {
        let count = 1 + rnd(8) as usize;
        let mut rects = Vec::new();
        for i in 0..count {
            let lo = rnd(40) as u128;
            let hi = lo + rnd(12) as u128;
            let plo = 1 + rnd(15) as u32;
            let phi = plo + rnd(6) as u32;
            let lifetime = if rnd(4) == 0 {
                Lifetime::Permanent
            } else {
                Lifetime::For(Duration::from_secs(1 + rnd(5)))
            };
            rects.push(Rect {
                lo,
                hi,
                plo,
                phi,
                label: Label {
                    lifetime,
                    names: BTreeSet::from([format!("r{i}")]),
                },
            });
        }
        let max = 63u128;
        let out = cover(rects.clone(), max);
        for a in 0..=max {
            for p in 0..=25u32 {
                let inside: Vec<&Rect> = rects
                    .iter()
                    .filter(|r| r.lo <= a && a <= r.hi && r.plo <= p && p <= r.phi)
                    .collect();
                let hits: Vec<&Rect> = out
                    .iter()
                    .filter(|r| r.lo <= a && a <= r.hi && r.plo <= p && p <= r.phi)
                    .collect();
                if inside.is_empty() {
                    assert!(
                        hits.is_empty(),
                        "round {round}: ({a},{p}) covered by output only"
                    );
                    continue;
                }
                assert_eq!(
                    hits.len(),
                    1,
                    "round {round}: ({a},{p}) covered {} times",
                    hits.len()
                );
                let mut want = inside[0].label.clone();
                for r in &inside[1..] {
                    want.merge(&r.label);
                }
                assert_eq!(hits[0].label, want, "round {round}: label at ({a},{p})");
            }
        }
    }
}
