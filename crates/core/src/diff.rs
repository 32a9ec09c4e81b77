//! Desired elements against live elements -> the smallest change.
//!
//! The live side is what a backend read back from the kernel right before
//! building the batch: a batch is all-or-nothing, so deleting an element
//! that expired a moment ago would fail the whole batch, and the only
//! defence is diffing against a fresh read.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ruleset::{ElementAttrs, ElementKey, Elements, SetId};

/// What the kernel reports for an element besides its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveAttrs {
    /// The timeout the element was created with (`None`: permanent).
    pub timeout: Option<Duration>,
    /// Time left before the kernel removes it (`None`: permanent).
    pub expires: Option<Duration>,
}

/// Elements read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveElements {
    sets: BTreeMap<SetId, BTreeMap<ElementKey, LiveAttrs>>,
}

impl LiveElements {
    /// Nothing live.
    pub fn new() -> LiveElements {
        LiveElements::default()
    }

    /// Records one live element.
    pub fn insert(&mut self, set: SetId, key: ElementKey, attrs: LiveAttrs) {
        self.sets.entry(set).or_default().insert(key, attrs);
    }

    /// The live elements of one set.
    pub fn set(&self, set: SetId) -> impl Iterator<Item = (&ElementKey, &LiveAttrs)> {
        self.sets.get(&set).into_iter().flat_map(|m| m.iter())
    }

    /// Total number of live elements.
    pub fn len(&self) -> usize {
        self.sets.values().map(|m| m.len()).sum()
    }

    /// True when no set has an element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One element to add (with its attributes) or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The set.
    pub set: SetId,
    /// The element key.
    pub key: ElementKey,
    /// Attributes for an add; for a delete, the desired attributes are not
    /// needed and this holds an empty comment.
    pub attrs: ElementAttrs,
}

/// Why an element is in the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Desired, not live.
    Added,
    /// Live, not desired.
    Removed,
    /// Live and desired, but its timeout must be renewed or changed; sent as
    /// delete + add in the same batch, because re-adding an existing element
    /// does not refresh its timeout on every set type.
    Refreshed,
}

/// The change that takes the live elements to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Elements to delete (removed and refreshed ones), sent first.
    pub delete: Vec<Change>,
    /// Elements to add (added and refreshed ones), sent after the deletes.
    pub add: Vec<Change>,
    /// Every element with why it changed, for `plan` and logs.
    pub changes: Vec<(ChangeKind, Change)>,
}

impl Diff {
    /// True when nothing needs to be sent.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }

    /// How many elements of a kind.
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.changes.iter().filter(|(k, _)| *k == kind).count()
    }
}

/// Extra lifetime written into the kernel on top of the desired timeout:
/// 1% of it, between 1 s and 10 s. An element is refreshed only when it
/// would expire before its desired deadline, so it never closes early;
/// the slack is what keeps a re-apply moments later from renewing every
/// resolved element. The price: an address may stay open up to the slack
/// after its deadline.
pub fn refresh_slack(timeout: Duration) -> Duration {
    (timeout / 100).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// The timeout a backend writes for an element whose desired remaining
/// lifetime is `timeout`.
pub fn kernel_timeout(timeout: Duration) -> Duration {
    timeout + refresh_slack(timeout)
}

fn needs_refresh(desired: &ElementAttrs, live: &LiveAttrs) -> bool {
    match (desired.timeout, live.timeout, live.expires) {
        (None, None, _) => false,
        // Permanent wanted but it would expire, or the other way round.
        (None, Some(_), _) | (Some(_), None, _) => true,
        // The kernel would close it before the desired deadline.
        (Some(want), Some(_), Some(left)) => left < want,
        (Some(_), Some(_), None) => true,
    }
}

/// Computes the diff. Deterministic: changes come in set, then key order.
pub fn diff(desired: &Elements, live: &LiveElements) -> Diff {
    let mut d = Diff::default();
    for set in SetId::ALL {
        // Both sides are maps by key already: look up in place rather than
        // copying every key into new maps on each apply.
        let have = live.sets.get(&set);
        for (key, live_attrs) in live.set(set) {
            match desired.get(set, key) {
                None => {
                    let c = Change {
                        set,
                        key: *key,
                        attrs: ElementAttrs {
                            timeout: live_attrs.timeout,
                            comment: String::new(),
                        },
                    };
                    d.delete.push(c.clone());
                    d.changes.push((ChangeKind::Removed, c));
                }
                Some(attrs) if needs_refresh(attrs, live_attrs) => {
                    let c = Change {
                        set,
                        key: *key,
                        attrs: attrs.clone(),
                    };
                    d.delete.push(c.clone());
                    d.add.push(c.clone());
                    d.changes.push((ChangeKind::Refreshed, c));
                }
                Some(_) => {}
            }
        }
        for (key, attrs) in desired.set(set) {
            if !have.is_some_and(|m| m.contains_key(key)) {
                let c = Change {
                    set,
                    key: *key,
                    attrs: attrs.clone(),
                };
                d.add.push(c.clone());
                d.changes.push((ChangeKind::Added, c));
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::AddrRange;
    use std::net::IpAddr;

    fn key(a: &str) -> ElementKey {
        ElementKey::Range(AddrRange::single(a.parse::<IpAddr>().unwrap()))
    }

    fn attrs(t: Option<u64>) -> ElementAttrs {
        ElementAttrs {
            timeout: t.map(Duration::from_secs),
            comment: "x".into(),
        }
    }

    fn live(t: Option<u64>, left: Option<u64>) -> LiveAttrs {
        LiveAttrs {
            timeout: t.map(Duration::from_secs),
            expires: left.map(Duration::from_secs),
        }
    }

    #[test]
    fn identical_sets_give_an_empty_diff() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        for a in ["192.0.2.1", "192.0.2.2"] {
            want.insert(SetId::Any4, key(a), attrs(None));
            have.insert(SetId::Any4, key(a), live(None, None));
        }
        let d = diff(&want, &have);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn adds_and_removes_only_the_difference() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        want.insert(SetId::Any4, key("192.0.2.1"), attrs(None));
        want.insert(SetId::Any4, key("192.0.2.3"), attrs(None));
        have.insert(SetId::Any4, key("192.0.2.1"), live(None, None));
        have.insert(SetId::Any4, key("192.0.2.2"), live(None, None));
        let d = diff(&want, &have);
        assert_eq!(d.add.len(), 1);
        assert_eq!(d.add[0].key, key("192.0.2.3"));
        assert_eq!(d.delete.len(), 1);
        assert_eq!(d.delete[0].key, key("192.0.2.2"));
        assert_eq!(d.count(ChangeKind::Added), 1);
        assert_eq!(d.count(ChangeKind::Removed), 1);
        assert_eq!(d.count(ChangeKind::Refreshed), 0);
    }

    #[test]
    fn same_key_in_another_set_is_a_different_element() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        want.insert(SetId::Any4, key("192.0.2.1"), attrs(None));
        have.insert(SetId::Dns4, key("192.0.2.1"), live(None, None));
        let d = diff(&want, &have);
        assert_eq!((d.add.len(), d.delete.len()), (1, 1));
        assert_eq!(d.add[0].set, SetId::Any4);
        assert_eq!(d.delete[0].set, SetId::Dns4);
    }

    #[test]
    fn fresh_enough_timeouts_are_left_alone() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        // Written 606 s (600 + slack) a few seconds ago: still beyond the
        // desired deadline, so nothing to send.
        want.insert(SetId::Any4, key("192.0.2.1"), attrs(Some(600)));
        have.insert(SetId::Any4, key("192.0.2.1"), live(Some(606), Some(603)));
        assert!(diff(&want, &have).is_empty());
        // One second short of the deadline: refreshed, never left to close
        // early.
        let mut have = LiveElements::new();
        have.insert(SetId::Any4, key("192.0.2.1"), live(Some(606), Some(599)));
        assert_eq!(diff(&want, &have).count(ChangeKind::Refreshed), 1);
    }

    #[test]
    fn timeouts_running_out_early_are_refreshed_by_delete_and_add() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        want.insert(SetId::Any4, key("192.0.2.1"), attrs(Some(600)));
        have.insert(SetId::Any4, key("192.0.2.1"), live(Some(600), Some(500)));
        let d = diff(&want, &have);
        assert_eq!(d.count(ChangeKind::Refreshed), 1);
        assert_eq!(d.delete.len(), 1);
        assert_eq!(d.add.len(), 1);
        assert_eq!(d.add[0].attrs.timeout, Some(Duration::from_secs(600)));
    }

    #[test]
    fn permanent_and_timed_swap_is_a_refresh() {
        let mut want = Elements::new();
        let mut have = LiveElements::new();
        want.insert(SetId::Any4, key("192.0.2.1"), attrs(None));
        have.insert(SetId::Any4, key("192.0.2.1"), live(Some(600), Some(599)));
        want.insert(SetId::Any4, key("192.0.2.2"), attrs(Some(60)));
        have.insert(SetId::Any4, key("192.0.2.2"), live(None, None));
        assert_eq!(diff(&want, &have).count(ChangeKind::Refreshed), 2);
    }

    #[test]
    fn slack_is_bounded() {
        assert_eq!(
            refresh_slack(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            refresh_slack(Duration::from_secs(305)),
            Duration::from_millis(3050)
        );
        assert_eq!(
            refresh_slack(Duration::from_secs(7200)),
            Duration::from_secs(10)
        );
    }
}
