//! The replicated state of a cluster, as plain data with a pure `apply`: members, and the route table (topic filter
//! → nodes with at least one local subscriber on it). Every node applies the same log to it, so reads are local.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use skein_codec::FilterTrie;
use skein_codec::topic::{self, Filter};

pub type NodeId = u64;

/// How to reach a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Member {
    /// gRPC address of the node-to-node API.
    pub cluster_addr: String,
    /// MQTT address clients use (for `skein cluster status`).
    pub mqtt_addr: String,
}

/// A change to the replicated state: the `D` of the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node's addresses.
    Member { node: NodeId, member: Member },
    /// A node's whole route set, replacing what it had: sent when it joins or comes back.
    Announce { node: NodeId, filters: Vec<String> },
    /// Filters a node gained its first, or lost its last, local subscriber on; batched.
    Routes { node: NodeId, added: Vec<String>, removed: Vec<String> },
    /// Forget a node's routes (it left, or stopped answering).
    Purge { node: NodeId },
}

/// What applying a command returns: the `R` of the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Applied {
    /// Route entries that changed.
    pub changed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    pub members: BTreeMap<NodeId, Member>,
    pub routes: BTreeMap<String, BTreeSet<NodeId>>,
}

impl ClusterState {
    pub fn apply(&mut self, command: &Command) -> Applied {
        let mut changed = 0;
        match command {
            Command::Member { node, member } => {
                self.members.insert(*node, member.clone());
            }
            Command::Announce { node, filters } => {
                changed += self.purge(*node);
                for f in filters {
                    changed += usize::from(self.routes.entry(f.clone()).or_default().insert(*node));
                }
            }
            Command::Routes { node, added, removed } => {
                for f in added {
                    changed += usize::from(self.routes.entry(f.clone()).or_default().insert(*node));
                }
                for f in removed {
                    if let Some(nodes) = self.routes.get_mut(f) {
                        changed += usize::from(nodes.remove(node));
                        if nodes.is_empty() {
                            self.routes.remove(f);
                        }
                    }
                }
            }
            Command::Purge { node } => changed += self.purge(*node),
        }
        Applied { changed }
    }

    fn purge(&mut self, node: NodeId) -> usize {
        let mut changed = 0;
        self.routes.retain(|_, nodes| {
            changed += usize::from(nodes.remove(&node));
            !nodes.is_empty()
        });
        changed
    }

    /// The matching index over the route table, for forwarding.
    pub fn index(&self) -> RouteIndex {
        let mut trie = FilterTrie::new();
        for (filter, nodes) in &self.routes {
            // A shared group's filter routes by the filter after the group name.
            let inner = match topic::parse_filter(filter) {
                Ok(Filter::Shared { filter, .. }) => filter,
                Ok(Filter::Plain(f)) => f,
                Err(_) => continue,
            };
            for n in nodes {
                trie.insert(inner, *n);
            }
        }
        RouteIndex { trie }
    }
}

/// Topic → nodes with a subscriber it matches.
#[derive(Debug, Default)]
pub struct RouteIndex {
    trie: FilterTrie<NodeId>,
}

impl RouteIndex {
    /// The nodes other than `me` that have a subscriber matching `topic`, each once.
    pub fn remote_nodes(&self, topic: &str, me: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        self.trie.for_each_match(topic, |n| {
            if *n != me && !out.contains(n) {
                out.push(*n);
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn routes_follow_first_and_last_subscribers() {
        let mut st = ClusterState::default();
        st.apply(&Command::Routes { node: 1, added: s(&["a/#", "b"]), removed: vec![] });
        st.apply(&Command::Routes { node: 2, added: s(&["a/#"]), removed: vec![] });
        assert_eq!(st.routes["a/#"], BTreeSet::from([1, 2]));
        st.apply(&Command::Routes { node: 1, added: vec![], removed: s(&["a/#", "b"]) });
        assert_eq!(st.routes["a/#"], BTreeSet::from([2]));
        assert!(!st.routes.contains_key("b"), "empty entries go");
        assert_eq!(st.index().remote_nodes("a/x", 1), vec![2]);
        assert_eq!(st.index().remote_nodes("a/x", 2), Vec::<NodeId>::new(), "never to itself");
    }

    #[test]
    fn announce_replaces_and_purge_forgets() {
        let mut st = ClusterState::default();
        st.apply(&Command::Routes { node: 3, added: s(&["old", "keep"]), removed: vec![] });
        let applied = st.apply(&Command::Announce { node: 3, filters: s(&["keep", "new"]) });
        assert_eq!(st.routes.keys().cloned().collect::<Vec<_>>(), s(&["keep", "new"]));
        assert_eq!(applied.changed, 4, "old, keep removed; keep, new added");
        st.apply(&Command::Purge { node: 3 });
        assert!(st.routes.is_empty());
    }

    #[test]
    fn shared_filters_route_by_their_inner_filter() {
        let mut st = ClusterState::default();
        st.apply(&Command::Routes { node: 2, added: s(&["$share/g/t/+"]), removed: vec![] });
        assert_eq!(st.index().remote_nodes("t/x", 1), vec![2]);
        assert!(st.index().remote_nodes("u/x", 1).is_empty());
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut st = ClusterState::default();
        st.apply(&Command::Member { node: 1, member: Member { cluster_addr: "a".into(), mqtt_addr: "b".into() } });
        st.apply(&Command::Routes { node: 1, added: s(&["x"]), removed: vec![] });
        let json = serde_json::to_vec(&st).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterState>(&json).unwrap(), st);
    }
}
