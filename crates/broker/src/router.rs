//! The subscription index of one node: topic filter → subscribers, plus shared-subscription groups. Matching runs
//! under a read lock that is never held across an await; the publish path copies out the targets and lets go.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytestring::ByteString;
use skein_codec::topic::Filter;
use skein_codec::{FilterTrie, QoS, SubscriptionOptions};

use crate::broker::SessionHandle;

/// One subscription of one session, as the router holds it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<SessionHandle>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug)]
enum Route {
    Direct(Subscriber),
    /// Index into `Router::groups`.
    Shared(ByteString),
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

/// Where a message goes: one entry per subscription that matched (a session may appear more than once).
#[derive(Debug, Clone)]
pub struct Target {
    pub subscriber: Subscriber,
    /// The `$share/{group}/{filter}` it matched through, if shared (no retained-on-subscribe, no No Local).
    pub shared: Option<ByteString>,
}

/// The subscriptions one message matches: inline for a few, as most messages have (routing runs for every
/// message, and an allocation each was a good part of its cost).
pub type Targets = smallvec::SmallVec<[Target; 4]>;

#[derive(Debug, Default)]
pub struct Router {
    trie: FilterTrie<Route>,
    /// `$share/{group}/{filter}` → its members, served round-robin.
    groups: HashMap<ByteString, Group>,
    /// Subscribers per filter string: the cluster hears of a filter when its first subscriber comes and its last goes.
    per_filter: HashMap<ByteString, usize>,
    subscriptions: usize,
}

/// How a subscribe or unsubscribe changed the filters this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The session had no subscription on this filter before (subscribe) / had one (unsubscribe).
    pub session_changed: bool,
    /// The node gained its first subscriber on the filter (subscribe) / lost its last (unsubscribe).
    pub node_changed: bool,
}

impl Router {
    /// Adds or replaces `session`'s subscription on `filter` (already validated).
    pub fn subscribe(&mut self, filter: &str, sub: Subscriber) -> Change {
        let replaced = self.remove(filter, &sub.session);
        self.subscriptions += 1;
        let count = self.per_filter.entry(ByteString::from(filter)).or_default();
        *count += 1;
        let node_changed = *count == 1;
        match skein_codec::topic::parse_filter(filter) {
            Ok(Filter::Shared { filter: inner, .. }) => {
                let key = ByteString::from(filter);
                let group = self.groups.entry(key.clone()).or_default();
                if group.members.is_empty() {
                    self.trie.insert(inner, Route::Shared(key));
                }
                group.members.push(sub);
            }
            _ => self.trie.insert(filter, Route::Direct(sub)),
        }
        Change { session_changed: !replaced, node_changed }
    }

    /// Whether a subscription here matches a topic in common with `filter` (plain or `$share/`; see
    /// [`FilterTrie::overlaps`]).
    pub fn overlaps(&self, filter: &str) -> bool {
        match skein_codec::topic::parse_filter(filter) {
            Ok(Filter::Plain(f) | Filter::Shared { filter: f, .. }) => self.trie.overlaps(f),
            Err(_) => false,
        }
    }

    /// Removes `session`'s subscription on `filter`.
    pub fn unsubscribe(&mut self, filter: &str, session: &Arc<SessionHandle>) -> Change {
        let removed = self.remove(filter, session);
        Change { session_changed: removed, node_changed: removed && !self.per_filter.contains_key(filter) }
    }

    fn remove(&mut self, filter: &str, session: &Arc<SessionHandle>) -> bool {
        let removed = match skein_codec::topic::parse_filter(filter) {
            Ok(Filter::Shared { filter: inner, .. }) => {
                let Some(group) = self.groups.get_mut(filter) else { return false };
                let before = group.members.len();
                group.members.retain(|m| !Arc::ptr_eq(&m.session, session));
                let removed = before - group.members.len();
                if group.members.is_empty() {
                    self.groups.remove(filter);
                    self.trie.remove(inner, |r| matches!(r, Route::Shared(k) if k == filter));
                }
                removed
            }
            _ => self.trie.remove(filter, |r| matches!(r, Route::Direct(s) if Arc::ptr_eq(&s.session, session))),
        };
        self.subscriptions -= removed;
        if removed > 0
            && let Some(count) = self.per_filter.get_mut(filter)
        {
            *count = count.saturating_sub(removed);
            if *count == 0 {
                self.per_filter.remove(filter);
            }
        }
        removed > 0
    }

    /// The filters this node has at least one subscriber on: what it announces to a cluster.
    pub fn filters(&self) -> impl Iterator<Item = &ByteString> {
        self.per_filter.keys()
    }

    /// Every subscription matching `topic`: all direct subscribers, and one member of each shared group that
    /// `groups` lets this node serve.
    pub fn route(&self, topic: &str, groups: &Groups<'_>, out: &mut Targets) {
        self.trie.for_each_match(topic, |route| match route {
            Route::Direct(s) => {
                if groups.plain() {
                    out.push(Target { subscriber: s.clone(), shared: None })
                }
            }
            Route::Shared(key) => {
                if groups.serves(key)
                    && let Some(group) = self.groups.get(key)
                    && !group.members.is_empty()
                {
                    let n = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
                    if let Some(m) = group.members.get(n) {
                        out.push(Target { subscriber: m.clone(), shared: Some(key.clone()) });
                    }
                }
            }
        });
    }

    /// The next member of shared group `key` (`$share/{group}/{filter}`), in the group's turn.
    pub fn next_member(&self, key: &str) -> Option<Subscriber> {
        let group = self.groups.get(key).filter(|g| !g.members.is_empty())?;
        let n = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
        group.members.get(n).cloned()
    }

    /// Whether shared group `key` has a member here.
    pub fn has_members(&self, key: &str) -> bool {
        self.groups.get(key).is_some_and(|g| !g.members.is_empty())
    }

    /// Shared subscriptions held, over all groups.
    pub fn shared_len(&self) -> usize {
        self.groups.values().map(|g| g.members.len()).sum()
    }

    /// Subscriptions held, over all sessions.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }
}

/// Which shared groups (keyed by their full `$share/{group}/{filter}`) this node delivers a message to. In a
/// cluster one node serves each group per message; the others leave it alone.
#[derive(Debug, Clone, Copy)]
pub enum Groups<'a> {
    All,
    /// All but these: other nodes serve them.
    Except(&'a [ByteString]),
    /// Only these: what the publishing node asked this one to serve.
    Only(&'a [ByteString]),
    /// Only these groups, and no plain subscriber: a message handed on from a group member that left elsewhere.
    GroupsOnly(&'a [ByteString]),
}

impl Groups<'_> {
    pub fn serves(&self, key: &str) -> bool {
        match self {
            Groups::All => true,
            Groups::Except(keys) => !keys.iter().any(|k| k == key),
            Groups::Only(keys) | Groups::GroupsOnly(keys) => keys.iter().any(|k| k == key),
        }
    }

    /// Whether plain (not shared) subscribers get the message.
    pub fn plain(&self) -> bool {
        !matches!(self, Groups::GroupsOnly(_))
    }
}

/// The QoS a subscriber receives a message at [MQTT-3.8.4-8]: the lower of the two.
pub fn delivered_qos(message: QoS, granted: QoS) -> QoS {
    message.min(granted)
}
