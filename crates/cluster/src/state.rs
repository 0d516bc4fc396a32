//! The replicated state of a cluster, as plain data with a pure `apply`: members, the route table (topic filter
//! → nodes with at least one local subscriber on it) and the retained messages. Every node applies the same log to
//! it, so reads are local.

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
    /// Retained messages published on `node`, applied in order: (the node's sequence number of the change, topic,
    /// the message as `Message::encode_stored` writes it (base64 in the log's JSON), or `None` to clear the topic). Batched: the
    /// changes a node collected while its previous batch was being committed.
    Retain {
        node: NodeId,
        #[serde(with = "crate::compact::changes")]
        changes: Vec<(u64, String, Option<Vec<u8>>)>,
    },
    /// The client registry: persistent sessions `node` now holds (client id, when its connection came, in
    /// nanoseconds since the Unix epoch) and ones it no longer holds (client id, the `since` of the claim it
    /// drops). Batched, applied in order.
    Clients { node: NodeId, claimed: Vec<(String, u64)>, released: Vec<(String, u64)> },
}

/// Where a client's persistent session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: NodeId,
    /// When the connection that made the claim came (nanoseconds since the Unix epoch); 0 for a session a node
    /// re-registers after a restart or a purge, which never displaces a claim made by a connection.
    pub since: u64,
    /// The log index of the claim: it counts up with every change of owner.
    pub epoch: u64,
}

impl Claim {
    /// Whether a claim made `since` by `node` displaces this one: the later connection wins, whatever order the
    /// claims reach the log in (a session started afresh does not wait for its claim), and ties go by node id.
    fn yields_to(&self, node: NodeId, since: u64) -> bool {
        (since, node) > (self.since, self.node)
    }
}

/// What applying a claim did, for the node that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub client_id: String,
    pub since: u64,
    /// The claim it displaced, if any: who held the session before.
    pub previous: Option<Claim>,
    /// False when a later claim of another node was there first: this connection is the older one.
    pub won: bool,
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
    /// Topic → its retained message, encoded.
    #[serde(default, with = "crate::compact::map")]
    pub retained: BTreeMap<String, Vec<u8>>,
    /// Node → the sequence number of its last retained change applied: a forwarded copy at or below it is old news.
    #[serde(default)]
    pub retain_applied: BTreeMap<NodeId, u64>,
    /// The client registry: client id → the node holding its persistent session.
    #[serde(default)]
    pub clients: BTreeMap<String, Claim>,
}

impl ClusterState {
    /// Applies `command`, the log entry at `index`. Claims applied for `node` are reported to `claimed`.
    pub fn apply_at(&mut self, command: &Command, index: u64, mut claimed: impl FnMut(NodeId, Claimed)) -> Applied {
        let Command::Clients { node, claimed: claims, released } = command else { return self.apply(command) };
        let mut changed = 0;
        for (client_id, since) in claims {
            let previous = self.clients.get(client_id).copied();
            let won = previous.is_none_or(|p| p.yields_to(*node, *since));
            if won {
                self.clients.insert(client_id.clone(), Claim { node: *node, since: *since, epoch: index });
                changed += 1;
            }
            claimed(*node, Claimed { client_id: client_id.clone(), since: *since, previous, won });
        }
        for (client_id, since) in released {
            if self.clients.get(client_id).is_some_and(|c| c.node == *node && c.since == *since) {
                self.clients.remove(client_id);
                changed += 1;
            }
        }
        Applied { changed }
    }

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
            Command::Purge { node } => {
                changed += self.purge(*node);
                let before = self.clients.len();
                self.clients.retain(|_, c| c.node != *node);
                changed += before - self.clients.len();
            }
            Command::Clients { .. } => return self.apply_at(command, 0, |_, _| {}),
            Command::Retain { node, changes } => {
                for (seq, topic, message) in changes {
                    changed += usize::from(match message {
                        Some(m) => self.retained.insert(topic.clone(), m.clone()).as_ref() != Some(m),
                        None => self.retained.remove(topic).is_some(),
                    });
                    let applied = self.retain_applied.entry(*node).or_default();
                    *applied = (*applied).max(*seq);
                }
            }
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
        let mut plain = FilterTrie::new();
        let mut shared = FilterTrie::new();
        for (filter, nodes) in &self.routes {
            match topic::parse_filter(filter) {
                Ok(Filter::Plain(f)) => nodes.iter().for_each(|n| plain.insert(f, *n)),
                // A shared group routes by the filter after its name, and is served by one of its nodes.
                Ok(Filter::Shared { filter: inner, .. }) => {
                    shared.insert(inner, SharedRoute { key: filter.clone(), nodes: nodes.iter().copied().collect() })
                }
                Err(_) => {}
            }
        }
        RouteIndex { plain, shared }
    }
}

#[derive(Debug)]
struct SharedRoute {
    key: String,
    nodes: Vec<NodeId>,
}

/// Topic → nodes with a subscriber it matches.
#[derive(Debug, Default)]
pub struct RouteIndex {
    plain: FilterTrie<NodeId>,
    shared: FilterTrie<SharedRoute>,
}

/// Nodes a message's plain routes lead to: inline for a few (see `Plan::nodes`).
pub type PlainNodes = smallvec::SmallVec<[NodeId; 4]>;

/// Where one message goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Other nodes, each once, with the shared groups it serves for this message. Inline for a few nodes: a plan
    /// is made for every message published here.
    pub nodes: smallvec::SmallVec<[(NodeId, Vec<String>); 4]>,
    /// Shared groups served elsewhere: this node must leave them.
    pub groups_elsewhere: Vec<String>,
    /// Shared groups this node serves, by the table: if its last member here has just gone (the table does not
    /// know yet), the broker hands the message to the group elsewhere.
    pub groups_here: Vec<String>,
}

impl RouteIndex {
    /// The whole plan for a message published on `me`: plain routes, and one node per matching shared group,
    /// taken in turn (by `turn`, which outlives index rebuilds) among the nodes that have members of it, passing
    /// over those `unreachable` says cannot be reached while another can serve the group (its routes stay until
    /// the node has been gone the node timeout; the group's messages meanwhile go to its members that are there).
    pub fn plan(
        &self,
        topic: &str,
        me: NodeId,
        turn: &std::sync::atomic::AtomicUsize,
        unreachable: &dyn Fn(NodeId) -> bool,
    ) -> Plan {
        self.plan_with(&self.plain_nodes(topic, me), topic, me, turn, unreachable)
    }

    /// The nodes other than `me` with a plain route that `topic` matches, each once: the part of a plan that
    /// depends on the topic and the table alone (so it may be remembered for the next message to the same topic).
    pub fn plain_nodes(&self, topic: &str, me: NodeId) -> PlainNodes {
        let mut nodes = PlainNodes::new();
        self.plain.for_each_match(topic, |n| {
            if *n != me && !nodes.contains(n) {
                nodes.push(*n);
            }
        });
        nodes
    }

    /// `plan`, with `plain` the topic's `plain_nodes` (of this index).
    pub fn plan_with(
        &self,
        plain: &[NodeId],
        topic: &str,
        me: NodeId,
        turn: &std::sync::atomic::AtomicUsize,
        unreachable: &dyn Fn(NodeId) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        plan.nodes.extend(plain.iter().map(|n| (*n, Vec::new())));
        if self.shared.is_empty() {
            return plan;
        }
        self.shared.for_each_match(topic, |g| {
            if g.nodes.is_empty() {
                return;
            }
            let turn = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let len = g.nodes.len();
            let chosen = (0..len)
                .map(|k| g.nodes[(turn + k) % len])
                .find(|n| *n == me || !unreachable(*n))
                .unwrap_or(g.nodes[turn % len]);
            if chosen == me {
                plan.groups_here.push(g.key.clone());
                return;
            }
            plan.groups_elsewhere.push(g.key.clone());
            match plan.nodes.iter_mut().find(|(n, _)| *n == chosen) {
                Some((_, groups)) => groups.push(g.key.clone()),
                None => plan.nodes.push((chosen, vec![g.key.clone()])),
            }
        });
        plan
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
        let turn = std::sync::atomic::AtomicUsize::new(0);
        assert_eq!(st.index().plan("a/x", 1, &turn, &|_| false).nodes[..], [(2, vec![])]);
        assert_eq!(st.index().plan("a/x", 2, &turn, &|_| false).nodes[..], [], "never to itself");
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
    fn each_shared_group_is_served_by_one_node_in_turn() {
        let mut st = ClusterState::default();
        st.apply(&Command::Routes { node: 1, added: s(&["$share/g/t/+"]), removed: vec![] });
        st.apply(&Command::Routes { node: 2, added: s(&["$share/g/t/+", "t/#"]), removed: vec![] });
        let index = st.index();
        let turn = std::sync::atomic::AtomicUsize::new(0);
        let (mut here, mut there) = (0, 0);
        for _ in 0..10 {
            let plan = index.plan("t/x", 1, &turn, &|_| false);
            if plan.groups_elsewhere.is_empty() {
                here += 1;
                assert_eq!(plan.nodes[..], [(2, vec![])], "node 2 still gets it for its plain subscriber");
            } else {
                there += 1;
                assert_eq!(plan.nodes[..], [(2, vec!["$share/g/t/+".to_string()])]);
            }
        }
        assert_eq!((here, there), (5, 5), "the group alternates between its two nodes");
        assert!(index.plan("u/x", 1, &turn, &|_| false).nodes.is_empty());
    }

    #[test]
    fn a_shared_group_passes_over_a_node_that_cannot_be_reached_while_another_can_serve_it() {
        let mut st = ClusterState::default();
        st.apply(&Command::Routes { node: 2, added: s(&["$share/g/t/+"]), removed: vec![] });
        st.apply(&Command::Routes { node: 3, added: s(&["$share/g/t/+"]), removed: vec![] });
        let index = st.index();
        let turn = std::sync::atomic::AtomicUsize::new(0);
        let group = || vec!["$share/g/t/+".to_string()];
        for _ in 0..6 {
            assert_eq!(index.plan("t/x", 1, &turn, &|n| n == 3).nodes[..], [(2, group())], "node 3 is away");
        }
        let served: Vec<NodeId> = (0..4).map(|_| index.plan("t/x", 1, &turn, &|_| false).nodes[0].0).collect();
        assert_eq!(served, [2, 3, 2, 3], "in turn again once it is back");
        // With no other node to serve it, the group still goes to its node: the message waits for it there.
        assert_eq!(index.plan("t/x", 1, &turn, &|_| true).nodes.len(), 1);
        // A member here serves the group while the other node is away.
        st.apply(&Command::Routes { node: 1, added: s(&["$share/g/t/+"]), removed: vec![] });
        let index = st.index();
        for _ in 0..4 {
            let plan = index.plan("t/x", 1, &turn, &|n| n != 1);
            assert!(plan.nodes.is_empty() && plan.groups_elsewhere.is_empty(), "{plan:?}");
        }
    }

    #[test]
    fn retained_messages_are_set_replaced_and_cleared() {
        let mut st = ClusterState::default();
        let set = |seq: u64, m: &[u8]| (seq, "t".to_string(), Some(m.to_vec()));
        let retain = |changes| Command::Retain { node: 2, changes };
        assert_eq!(st.apply(&retain(vec![set(1, b"1")])).changed, 1);
        assert_eq!(st.apply(&retain(vec![set(2, b"1")])).changed, 0, "the same again: no change");
        assert_eq!(st.apply(&retain(vec![set(3, b"2"), set(4, b"3")])).changed, 2, "in order");
        assert_eq!(st.retained["t"], b"3");
        assert_eq!(st.retain_applied[&2], 4, "node 2's last change applied");
        assert_eq!(st.apply(&retain(vec![(5, "t".into(), None)])).changed, 1);
        assert!(st.retained.is_empty());
    }

    #[test]
    fn the_registry_gives_each_session_to_the_latest_connection() {
        let mut st = ClusterState::default();
        let claim =
            |node, c: &str, since| Command::Clients { node, claimed: vec![(c.into(), since)], released: vec![] };
        let mut heard = Vec::new();
        st.apply_at(&claim(1, "c", 100), 5, |n, c| heard.push((n, c)));
        assert_eq!(st.clients["c"], Claim { node: 1, since: 100, epoch: 5 });
        assert_eq!(heard.pop(), Some((1, Claimed { client_id: "c".into(), since: 100, previous: None, won: true })));
        // A later connection on node 2: it takes the session, and hears that node 1 held it.
        st.apply_at(&claim(2, "c", 200), 6, |n, c| heard.push((n, c)));
        let previous = Some(Claim { node: 1, since: 100, epoch: 5 });
        assert_eq!(heard.pop(), Some((2, Claimed { client_id: "c".into(), since: 200, previous, won: true })));
        // A claim that reaches the log late (its connection came earlier) displaces nothing, and is told so.
        st.apply_at(&claim(3, "c", 150), 7, |n, c| heard.push((n, c)));
        assert!(!heard.pop().unwrap().1.won);
        assert_eq!(st.clients["c"], Claim { node: 2, since: 200, epoch: 6 });
        // A re-registration (since 0) fills a gap only.
        st.apply_at(&claim(3, "c", 0), 8, |_, _| {});
        st.apply_at(&claim(3, "d", 0), 9, |_, _| {});
        assert_eq!((st.clients["c"].node, st.clients["d"].node), (2, 3));
        // A release names the claim it drops: node 1's old one, or node 2's with the wrong time, change nothing.
        let release =
            |node, c: &str, since| Command::Clients { node, claimed: vec![], released: vec![(c.into(), since)] };
        assert_eq!(st.apply_at(&release(1, "c", 100), 10, |_, _| {}).changed, 0);
        assert_eq!(st.apply_at(&release(2, "c", 199), 11, |_, _| {}).changed, 0);
        assert_eq!(st.apply_at(&release(2, "c", 200), 12, |_, _| {}).changed, 1);
        assert!(!st.clients.contains_key("c"));
        // A purged node's sessions leave the registry with its routes.
        st.apply(&Command::Purge { node: 3 });
        assert!(st.clients.is_empty());
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut st = ClusterState::default();
        st.apply(&Command::Member { node: 1, member: Member { cluster_addr: "a".into(), mqtt_addr: "b".into() } });
        st.apply(&Command::Routes { node: 1, added: s(&["x"]), removed: vec![] });
        st.apply(&Command::Retain { node: 1, changes: vec![(1, "r".into(), Some(vec![0, 1, 255]))] });
        st.apply_at(&Command::Clients { node: 1, claimed: vec![("c".into(), 7)], released: vec![] }, 4, |_, _| {});
        let json = serde_json::to_vec(&st).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterState>(&json).unwrap(), st);
    }
}
