//! Test doubles, public so that other crates' tests (the firewall facade)
//! can drive the pf backend on any platform: [`FakePf`], a stand-in for
//! pfctl and ifconfig that keeps pf's state in memory, and [`TempDir`].
//!
//! The fake answers the commands this backend runs the way pfctl does as
//! far as the backend relies on it: exit status, which stream carries
//! what, rules printed back with their labels, tables printed one entry a
//! line. It does not reproduce pfctl's normalised rule text (it prints the
//! loaded line back as is), which the backend never reads beyond labels.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pfconf::referenced_anchors;
use crate::runner::{command_line, CommandOutput, CommandRunner};

/// macOS's stock `/etc/pf.conf` (comments shortened).
pub const APPLE_PF_CONF: &str = "#\n# Default PF configuration file.\n#\nscrub-anchor \"com.apple/*\"\nnat-anchor \"com.apple/*\"\nrdr-anchor \"com.apple/*\"\ndummynet-anchor \"com.apple/*\"\nanchor \"com.apple/*\"\nload anchor \"com.apple\" from \"/etc/pf.anchors/com.apple\"\n";

/// One recorded command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Call {
    /// The program as given.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What was piped to it.
    pub stdin: Option<String>,
}

impl Call {
    /// The command line, as in error messages.
    pub fn line(&self) -> String {
        command_line(&self.program, &self.args)
    }
}

/// One anchor's state in the fake.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FakeAnchor {
    /// Rule lines as loaded.
    pub rules: Vec<String>,
    /// Tables and their entries as written.
    pub tables: BTreeMap<String, BTreeSet<String>>,
    /// (packets, bytes) per rule index, printed by `-v`.
    pub counters: BTreeMap<usize, (u64, u64)>,
}

/// A fake pf: records every call and keeps pf's state in memory (or, with
/// [`FakePf::with_state`], in a file, so that it can stand in for the
/// pfctl and ifconfig programs of another process).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FakePf {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// pf is enabled.
    pub enabled: bool,
    /// Live enable references.
    pub tokens: Vec<u64>,
    next_token: u64,
    /// What `ifconfig -l` lists.
    pub interfaces: Vec<String>,
    /// Anchors the running main ruleset evaluates (from the last
    /// `pfctl -f FILE`).
    pub main_anchors: Vec<String>,
    /// Anchors with rules or tables.
    pub anchors: BTreeMap<String, FakeAnchor>,
    #[serde(skip)]
    failures: Vec<(Vec<String>, CommandOutput)>,
}

fn ok(stdout: impl Into<String>) -> io::Result<CommandOutput> {
    Ok(CommandOutput::ok(stdout))
}

fn fail(stderr: &str) -> io::Result<CommandOutput> {
    Ok(CommandOutput::failed(1, stderr))
}

/// Tables and rules of an anchor file (`pfctl -a A -f -`): table name with
/// its list (`None` when declared without one), and the rule lines.
type AnchorFile = (Vec<(String, Option<Vec<String>>)>, Vec<String>);

fn parse_anchor_file(text: &str) -> AnchorFile {
    let joined = text.replace("\\\n", " ");
    let mut tables = Vec::new();
    let mut rules = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("table <") {
            let (name, rest) = rest.split_once('>').unwrap_or((rest, ""));
            let list = rest.split_once('{').map(|(_, l)| {
                l.trim_end_matches(|c: char| c == '}' || c.is_whitespace())
                    .split([',', ' ', '\t'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
            tables.push((name.to_owned(), list));
        } else {
            rules.push(line.to_owned());
        }
    }
    (tables, rules)
}

impl FakePf {
    /// A Mac with these interfaces, pf disabled, pf.conf not loaded.
    pub fn new(interfaces: &[&str]) -> FakePf {
        FakePf {
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            next_token: 14_512_598_451_263_741_000,
            ..FakePf::default()
        }
    }

    /// Every later call with exactly `args` exits `code` printing `stderr`.
    pub fn fail(&mut self, args: &[&str], code: i32, stderr: &str) {
        self.failures.push((
            args.iter().map(|s| s.to_string()).collect(),
            CommandOutput::failed(code, stderr),
        ));
    }

    /// Forgets the scripted failures.
    pub fn clear_failures(&mut self) {
        self.failures.clear();
    }

    /// The calls' command lines, in order.
    pub fn lines(&self) -> Vec<String> {
        self.calls.iter().map(Call::line).collect()
    }

    /// Forgets the recorded calls (not the state).
    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    /// Loads the fake kept in the JSON file `state` (a fresh one without
    /// interfaces when there is none), lets `edit` use or change it, and
    /// writes it back atomically. A lock folder beside the file serialises
    /// processes, so a test changing the state (drift) and a daemon running
    /// "pfctl" never lose each other's updates.
    pub fn with_state<T>(state: &Path, edit: impl FnOnce(&mut FakePf) -> T) -> io::Result<T> {
        let lock = state.with_extension("lock");
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match std::fs::create_dir(&lock) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if std::time::Instant::now() > give_up {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{} held for 10 s", lock.display()),
                        ));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
        let result = (|| {
            let mut fake = match std::fs::read(state) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => FakePf::new(&[]),
                Err(e) => return Err(e),
            };
            let out = edit(&mut fake);
            let tmp = state.with_extension("tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&fake).map_err(io::Error::other)?,
            )?;
            std::fs::rename(&tmp, state)?;
            Ok(out)
        })();
        let _ = std::fs::remove_dir(&lock);
        result
    }

    /// A table's entries, sorted as strings.
    pub fn table(&self, anchor: &str, table: &str) -> Vec<String> {
        self.anchors
            .get(anchor)
            .and_then(|a| a.tables.get(table))
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn anchor_exists(&self, anchor: &str) -> bool {
        self.anchors.contains_key(anchor) || self.main_anchors.iter().any(|a| a == anchor)
    }

    fn main_rules(&self) -> String {
        let mut out = String::from(
            "scrub-anchor \"com.apple/*\" all fragment reassemble\nanchor \"com.apple/*\" all\n",
        );
        for a in &self.main_anchors {
            if a != "com.apple/*" {
                out.push_str(&format!("anchor \"{a}\" all\n"));
            }
        }
        out
    }

    fn pfctl(&mut self, a: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput> {
        match a {
            ["-s", "rules"] => ok(self.main_rules()),
            ["-s", "info"] => ok(if self.enabled {
                "Status: Enabled for 0 days 00:00:01           Debug: Urgent\n"
            } else {
                "Status: Disabled for 0 days 00:00:00          Debug: Urgent\n"
            }),
            ["-E"] => {
                self.enabled = true;
                self.next_token += 1;
                self.tokens.push(self.next_token);
                Ok(CommandOutput {
                    code: Some(0),
                    stdout: String::new(),
                    stderr: format!(
                        "No ALTQ support in kernel\nALTQ related functions disabled\npf enabled\nToken : {}\n",
                        self.next_token
                    ),
                })
            }
            ["-X", token] => {
                let t: u64 = token.parse().unwrap_or(0);
                match self.tokens.iter().position(|x| *x == t) {
                    Some(i) => {
                        self.tokens.remove(i);
                        if self.tokens.is_empty() {
                            self.enabled = false;
                            Ok(CommandOutput {
                                code: Some(0),
                                stdout: String::new(),
                                stderr: "pf disabled\n".into(),
                            })
                        } else {
                            ok("")
                        }
                    }
                    None => fail("pfctl: DIOCSTOPREF: Invalid argument\n"),
                }
            }
            ["-n", "-f", path] => match std::fs::read_to_string(path) {
                Ok(_) => ok(""),
                Err(_) => {
                    fail("pfctl: cannot open the main config file!: No such file or directory\n")
                }
            },
            ["-f", path] => match std::fs::read_to_string(path) {
                Ok(text) => {
                    self.main_anchors = referenced_anchors(&text);
                    Ok(CommandOutput {
                        code: Some(0),
                        stdout: String::new(),
                        stderr: "pfctl: Use of -f option, could result in flushing of rules\npresent in the main ruleset added by the system at startup.\n".into(),
                    })
                }
                Err(_) => {
                    fail("pfctl: cannot open the main config file!: No such file or directory\n")
                }
            },
            ["-a", anchor, "-f", "-"] => {
                let (tables, rules) = parse_anchor_file(stdin.unwrap_or(""));
                let entry = self.anchors.entry(anchor.to_string()).or_default();
                entry.rules = rules;
                entry.counters.clear();
                for (name, list) in tables {
                    let t = entry.tables.entry(name).or_default();
                    if let Some(list) = list {
                        *t = list.into_iter().collect();
                    }
                }
                ok("")
            }
            ["-a", anchor, "-s", "rules"] | ["-a", anchor, "-v", "-s", "rules"] => {
                if !self.anchor_exists(anchor) {
                    return fail("pfctl: DIOCGETRULES: Invalid argument\n");
                }
                let verbose = a.contains(&"-v");
                let mut out = String::new();
                if let Some(an) = self.anchors.get(*anchor) {
                    for (i, r) in an.rules.iter().enumerate() {
                        out.push_str(r);
                        out.push('\n');
                        if verbose {
                            let (p, b) = an.counters.get(&i).copied().unwrap_or((0, 0));
                            out.push_str(&format!(
                                "  [ Evaluations: {:<8}  Packets: {p:<8}  Bytes: {b:<10}  States: 0     ]\n",
                                p
                            ));
                        }
                    }
                }
                ok(out)
            }
            ["-a", anchor, "-s", "Tables"] => {
                if !self.anchor_exists(anchor) {
                    return fail("pfctl: Table does not exist.\n");
                }
                let names: String = self
                    .anchors
                    .get(*anchor)
                    .map(|an| an.tables.keys().map(|n| format!("{n}\n")).collect())
                    .unwrap_or_default();
                ok(names)
            }
            ["-a", anchor, "-t", table, "-T", "show"] => {
                match self
                    .anchors
                    .get(*anchor)
                    .and_then(|an| an.tables.get(*table))
                {
                    Some(t) => ok(t.iter().map(|e| format!("   {e}\n")).collect::<String>()),
                    None => fail("pfctl: Table does not exist.\n"),
                }
            }
            ["-a", anchor, "-t", table, "-T", "replace", "-f", "-"] => {
                let entries: BTreeSet<String> = stdin
                    .unwrap_or("")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                let n = entries.len();
                self.anchors
                    .entry(anchor.to_string())
                    .or_default()
                    .tables
                    .insert(table.to_string(), entries);
                Ok(CommandOutput {
                    code: Some(0),
                    stdout: String::new(),
                    stderr: format!("{n} addresses added.\n"),
                })
            }
            ["-a", anchor, "-t", table, "-T", "kill"] => {
                match self
                    .anchors
                    .get_mut(*anchor)
                    .and_then(|an| an.tables.remove(*table))
                {
                    Some(_) => ok(""),
                    None => fail("pfctl: Table does not exist.\n"),
                }
            }
            ["-a", anchor, "-t", table, "-T", "flush"] => {
                match self
                    .anchors
                    .get_mut(*anchor)
                    .and_then(|an| an.tables.get_mut(*table))
                {
                    Some(t) => {
                        t.clear();
                        ok("")
                    }
                    None => fail("pfctl: Table does not exist.\n"),
                }
            }
            ["-a", anchor, "-F", "rules"] => {
                if let Some(an) = self.anchors.get_mut(*anchor) {
                    an.rules.clear();
                    an.counters.clear();
                }
                self.drop_if_empty(anchor);
                ok("")
            }
            ["-a", anchor, "-F", "Tables"] => {
                if let Some(an) = self.anchors.get_mut(*anchor) {
                    an.tables.clear();
                }
                self.drop_if_empty(anchor);
                ok("")
            }
            _ => fail("fake pfctl: arguments this fake does not know\n"),
        }
    }

    /// pf removes an anchor's ruleset once it holds nothing.
    fn drop_if_empty(&mut self, anchor: &str) {
        if self
            .anchors
            .get(anchor)
            .is_some_and(|a| a.rules.is_empty() && a.tables.is_empty())
        {
            self.anchors.remove(anchor);
        }
    }
}

impl CommandRunner for FakePf {
    fn run(
        &mut self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> io::Result<CommandOutput> {
        let stdin = stdin.map(|s| String::from_utf8_lossy(s).into_owned());
        self.calls.push(Call {
            program: program.to_owned(),
            args: args.to_vec(),
            stdin: stdin.clone(),
        });
        if let Some((_, out)) = self.failures.iter().find(|(a, _)| a == args) {
            return Ok(out.clone());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.as_str() {
            "ifconfig" if a == ["-l"] => ok(format!("{}\n", self.interfaces.join(" "))),
            "pfctl" => self.pfctl(&a, stdin.as_deref()),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no program {program} in the fake"),
            )),
        }
    }
}

/// A fresh folder under the system temp dir, removed with its contents on
/// drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `egress-pf-PID-N-TAG`.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "egress-pf-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `path()/name` and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
