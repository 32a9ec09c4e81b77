//! launchd/ai.openclaw.egressd.plist is a well-formed XML property list
//! with what launchd needs to keep the daemon running as root from boot.

use std::path::PathBuf;

use plist::Value;

fn plist_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../launchd/ai.openclaw.egressd.plist")
}

#[test]
fn the_launchd_plist_has_the_expected_keys() {
    let path = plist_path();
    let text = std::fs::read_to_string(&path).unwrap();
    // launchd reads XML plists; a binary or JSON one would also parse here.
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
    let v = Value::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d = v.as_dictionary().expect("top level is a dict");

    assert_eq!(d["Label"].as_string(), Some("ai.openclaw.egressd"));
    // The file is named after its label, as launchctl expects.
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        "ai.openclaw.egressd.plist"
    );
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "/usr/local/bin/openclaw-egressd",
            "--config",
            "/private/etc/openclaw-egress/egressd.toml"
        ]
    );
    assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
    assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
    assert_eq!(
        d["StandardOutPath"].as_string(),
        Some("/var/log/openclaw-egressd.log")
    );
    assert_eq!(
        d["StandardErrorPath"].as_string(),
        Some("/var/log/openclaw-egressd.log")
    );
    assert_eq!(d["ThrottleInterval"].as_signed_integer(), Some(10));
    // A LaunchDaemon runs as root unless told otherwise: pfctl needs root.
    assert!(!d.contains_key("UserName"));
    let known = [
        "Label",
        "ProgramArguments",
        "RunAtLoad",
        "KeepAlive",
        "ThrottleInterval",
        "ExitTimeOut",
        "StandardOutPath",
        "StandardErrorPath",
    ];
    for k in d.keys() {
        assert!(known.contains(&k.as_str()), "unexpected key {k}");
    }
}

/// The daemon's own argument definitions, compiled here as they are in
/// the daemon (clap and std only), so the plist's arguments are checked by
/// the parser that will read them.
#[path = "../../daemon/src/args.rs"]
#[allow(dead_code)]
mod daemon_args;

#[test]
fn the_daemon_parses_the_plists_arguments() {
    use clap::Parser as _;
    let v = Value::from_file(plist_path()).unwrap();
    let args: Vec<String> = v.as_dictionary().unwrap()["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap().to_owned())
        .collect();
    let cli = daemon_args::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cli.config,
        std::path::Path::new("/private/etc/openclaw-egress/egressd.toml")
    );
    assert!(!cli.flush_on_exit);
}
