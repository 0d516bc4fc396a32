//! Topic names, topic filters and shared subscriptions (MQTT 5.0 section 4.7 and 4.8, 3.1.1 section 4.7):
//! validation, matching a name against a filter, and [`FilterTrie`], the index that matches one topic against many
//! filters at once. Pure data: used by the broker's router and by the cluster's route table alike.

use std::collections::HashMap;

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// [MQTT-4.7.3-1]: topic names and filters are at least one character long.
    #[error("it is empty")]
    Empty,
    /// [MQTT-3.3.2-2] [MQTT-4.7.0-1]: a topic name contains no wildcard.
    #[error("a topic name cannot contain '+' or '#'")]
    Wildcard,
    /// [MQTT-4.7.1-1]: '#' stands alone as the last level.
    #[error("'#' must be the whole last level of a filter")]
    MisplacedMultiLevelWildcard,
    /// [MQTT-4.7.1-2]: '+' fills a whole level.
    #[error("'+' must fill a whole level of a filter")]
    MisplacedSingleLevelWildcard,
    /// [MQTT-4.7.3-3]: at most 65,535 bytes.
    #[error("it is longer than 65,535 bytes")]
    TooLong,
    /// [MQTT-4.7.3-2]: no U+0000.
    #[error("it contains U+0000")]
    NullCharacter,
    /// [MQTT-4.8.2-1] [MQTT-4.8.2-2]: a share name is at least one character and holds no '/', '+' or '#'.
    #[error("the share name of a $share/ filter is empty or contains '+' or '#'")]
    InvalidShareName,
    /// MQTT 5.0 section 4.8.2: `$share/{ShareName}/{filter}` needs a filter after the share name.
    #[error("a $share/ filter needs a topic filter after the share name")]
    MissingSharedFilter,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A topic name as PUBLISH carries it: non-empty, no wildcards.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// A plain topic filter (not `$share/`): wildcards only as whole levels, `#` only last.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::MisplacedMultiLevelWildcard),
            "#" | "+" => {}
            _ if level.contains('#') => return Err(TopicError::MisplacedMultiLevelWildcard),
            _ if level.contains('+') => return Err(TopicError::MisplacedSingleLevelWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A filter as SUBSCRIBE carries it: plain, or a shared subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter<'a> {
    Plain(&'a str),
    /// `$share/{group}/{filter}`: the group's members share the messages matching `filter`.
    Shared {
        group: &'a str,
        filter: &'a str,
    },
}

impl<'a> Filter<'a> {
    /// The filter that messages are matched against.
    pub fn topic_filter(&self) -> &'a str {
        match self {
            Filter::Plain(f) | Filter::Shared { filter: f, .. } => f,
        }
    }
}

/// Parses and validates a subscription's filter.
pub fn parse_filter(s: &str) -> Result<Filter<'_>, TopicError> {
    check_common(s)?;
    let Some(rest) = s.strip_prefix("$share/") else {
        if s == "$share" {
            return Err(TopicError::InvalidShareName);
        }
        validate_topic_filter(s)?;
        return Ok(Filter::Plain(s));
    };
    let (group, filter) = rest.split_once('/').ok_or(TopicError::MissingSharedFilter)?;
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if filter.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    validate_topic_filter(filter)?;
    Ok(Filter::Shared { group, filter })
}

/// Whether `filter` (a valid plain filter) matches `topic` (a valid topic name). A filter starting with a wildcard
/// does not match a topic starting with `$` [MQTT-4.7.2-1]; `a/#` matches `a` itself [MQTT-4.7.1-2].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An index of topic filters, each holding values (subscribers, routes), matched a topic at a time. A lookup costs
/// the topic's depth times the wildcard branching, not the number of filters.
#[derive(Debug, Clone)]
pub struct FilterTrie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<V> {
    /// Keyed by level. foldhash (the default SipHash stood out in profiles of matching), seeded per process so
    /// that clients cannot pick levels that collide.
    children: HashMap<Box<str>, Node<V>, foldhash::fast::RandomState>,
    plus: Option<Box<Node<V>>>,
    /// Values of filters that end here.
    exact: Vec<V>,
    /// Values of filters that end with `/#` here (and so also match this level itself).
    hash: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: HashMap::default(), plus: None, exact: Vec::new(), hash: Vec::new() }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.exact.is_empty() && self.hash.is_empty()
    }
}

impl<V> Default for FilterTrie<V> {
    fn default() -> Self {
        FilterTrie { root: Node::default(), len: 0 }
    }
}

impl<V> FilterTrie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of values held, over all filters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `filter`, a valid plain filter.
    pub fn insert(&mut self, filter: &str, value: V) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    node.hash.push(value);
                    self.len += 1;
                    return;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => node.children.entry(level.into()).or_default(),
            };
        }
        node.exact.push(value);
        self.len += 1;
    }

    /// Removes the values under exactly `filter` for which `pred` holds; returns how many went.
    pub fn remove(&mut self, filter: &str, mut pred: impl FnMut(&V) -> bool) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, &mut pred);
        self.len -= removed;
        removed
    }

    fn remove_at(node: &mut Node<V>, levels: &[&str], pred: &mut impl FnMut(&V) -> bool) -> usize {
        let retain = |values: &mut Vec<V>, pred: &mut dyn FnMut(&V) -> bool| {
            let before = values.len();
            values.retain(|v| !pred(v));
            before - values.len()
        };
        match levels.split_first() {
            None => retain(&mut node.exact, pred),
            Some((&"#", _)) => retain(&mut node.hash, pred),
            Some((&"+", rest)) => {
                let Some(child) = node.plus.as_deref_mut() else { return 0 };
                let n = Self::remove_at(child, rest, pred);
                if child.is_empty() {
                    node.plus = None;
                }
                n
            }
            Some((level, rest)) => {
                let Some(child) = node.children.get_mut(*level) else { return 0 };
                let n = Self::remove_at(child, rest, pred);
                if child.is_empty() {
                    node.children.remove(*level);
                }
                n
            }
        }
    }

    /// Calls `f` with every value whose filter matches `topic` (a valid topic name). A value stored under several
    /// matching filters is visited once per filter; the caller merges overlapping subscriptions.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        // [MQTT-4.7.2-1]: no wildcard at the first level matches a $-topic.
        let wildcards_at_root = !topic.starts_with('$');
        Self::visit(&self.root, topic.split('/'), wildcards_at_root, &mut f);
    }

    fn visit<'a>(node: &'a Node<V>, mut levels: std::str::Split<'_, char>, wildcards: bool, f: &mut impl FnMut(&'a V)) {
        if wildcards {
            node.hash.iter().for_each(&mut *f);
        }
        let Some(level) = levels.next() else {
            node.exact.iter().for_each(f);
            return;
        };
        if let Some(child) = node.children.get(level) {
            Self::visit(child, levels.clone(), true, f);
        }
        if wildcards && let Some(plus) = &node.plus {
            Self::visit(plus, levels, true, f);
        }
    }

    /// Whether some filter held here and `filter` (a valid plain filter) match a topic in common. Errs towards yes:
    /// the `$`-topic rule is left aside, so a `+/x` held here overlaps a `$SYS/x` asked about.
    pub fn overlaps(&self, filter: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::overlap_at(&self.root, &levels)
    }

    fn overlap_at(node: &Node<V>, levels: &[&str]) -> bool {
        // A filter ending in `#` here matches this level and everything under it.
        if !node.hash.is_empty() {
            return true;
        }
        match levels.split_first() {
            None => !node.exact.is_empty(),
            Some((&"#", _)) => Self::holds_any(node),
            Some((&"+", rest)) => {
                node.children.values().any(|c| Self::overlap_at(c, rest))
                    || node.plus.as_deref().is_some_and(|p| Self::overlap_at(p, rest))
            }
            Some((level, rest)) => {
                node.children.get(*level).is_some_and(|c| Self::overlap_at(c, rest))
                    || node.plus.as_deref().is_some_and(|p| Self::overlap_at(p, rest))
            }
        }
    }

    fn holds_any(node: &Node<V>) -> bool {
        !node.exact.is_empty()
            || !node.hash.is_empty()
            || node.children.values().any(Self::holds_any)
            || node.plus.as_deref().is_some_and(Self::holds_any)
    }

    /// The values whose filters match `topic`, collected.
    pub fn matches(&self, topic: &str) -> Vec<&V> {
        let mut out = Vec::new();
        self.for_each_match(topic, |v| out.push(v));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_of_multi_level_wildcard() {
        // MQTT 5.0 section 4.7.1.2.
        for t in ["sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis/player1/score/wimbledon"] {
            assert!(matches("sport/tennis/player1/#", t), "{t}");
        }
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert_eq!(validate_topic_filter("sport/tennis#"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(validate_topic_filter("sport/tennis/#/ranking"), Err(TopicError::MisplacedMultiLevelWildcard));
    }

    #[test]
    fn spec_examples_of_single_level_wildcard() {
        // MQTT 5.0 section 4.7.1.3.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        for ok in ["+", "+/tennis/#", "sport/+/player1"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_filter("sport+"), Err(TopicError::MisplacedSingleLevelWildcard));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // MQTT 5.0 section 4.7.2.
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        let mut trie = FilterTrie::new();
        trie.insert("#", 1);
        trie.insert("+/monitor/Clients", 2);
        trie.insert("$SYS/#", 3);
        trie.insert("$SYS/monitor/+", 4);
        let mut got: Vec<i32> = trie.matches("$SYS/monitor/Clients").into_iter().copied().collect();
        got.sort();
        assert_eq!(got, vec![3, 4]);
    }

    #[test]
    fn topic_names_and_errors() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::NullCharacter));
        assert_eq!(validate_topic_name(&"a".repeat(65_536)), Err(TopicError::TooLong));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("a b/ü"), Ok(()));
    }

    #[test]
    fn shared_subscriptions_parse() {
        assert_eq!(parse_filter("$share/g/t/#"), Ok(Filter::Shared { group: "g", filter: "t/#" }));
        assert_eq!(parse_filter("$share/g/t/#").unwrap().topic_filter(), "t/#");
        assert_eq!(parse_filter("a/+"), Ok(Filter::Plain("a/+")));
        assert_eq!(parse_filter("$share//t"), Err(TopicError::InvalidShareName));
        assert_eq!(parse_filter("$share/g+/t"), Err(TopicError::InvalidShareName));
        assert_eq!(parse_filter("$share/g"), Err(TopicError::MissingSharedFilter));
        assert_eq!(parse_filter("$share/g/"), Err(TopicError::MissingSharedFilter));
        assert_eq!(parse_filter("$share"), Err(TopicError::InvalidShareName));
        assert_eq!(parse_filter("$share/g/a#"), Err(TopicError::MisplacedMultiLevelWildcard));
        // `$shared/...` is an ordinary filter.
        assert_eq!(parse_filter("$shared/x"), Ok(Filter::Plain("$shared/x")));
    }

    #[test]
    fn filters_overlap_when_a_topic_matches_both() {
        let mut t = FilterTrie::new();
        for f in ["a/b", "c/+/d", "e/#", "+/only"] {
            t.insert(f, ());
        }
        for (filter, overlaps) in [
            ("a/b", true),
            ("a/+", true),
            ("a/#", true),
            ("#", true),
            ("a", false),
            ("a/b/c", false),
            ("a/c", false),
            ("c/x/d", true),
            ("c/x/e", false),
            ("c/#", true),
            ("+/+/d", true),
            ("e", true),
            ("e/f/g", true),
            ("x/only", true),
            ("x/other", false),
            ("z/#", true),
            ("z/other/x", false),
            ("z", false),
        ] {
            assert_eq!(t.overlaps(filter), overlaps, "{filter}");
        }
        assert!(!FilterTrie::<()>::new().overlaps("#"));
    }

    #[test]
    fn trie_insert_match_remove() {
        let mut trie = FilterTrie::new();
        trie.insert("a/b", "exact");
        trie.insert("a/+", "plus");
        trie.insert("a/#", "hash");
        trie.insert("#", "all");
        trie.insert("a/b", "exact2");
        assert_eq!(trie.len(), 5);
        let mut got = trie.matches("a/b");
        got.sort();
        assert_eq!(got, vec![&"all", &"exact", &"exact2", &"hash", &"plus"]);
        let mut got = trie.matches("a");
        got.sort();
        assert_eq!(got, vec![&"all", &"hash"]);
        assert_eq!(trie.remove("a/b", |v| *v == "exact"), 1);
        assert_eq!(trie.remove("a/+", |_| true), 1);
        assert_eq!(trie.remove("x/y", |_| true), 0);
        assert_eq!(trie.len(), 3);
        let mut got = trie.matches("a/b");
        got.sort();
        assert_eq!(got, vec![&"all", &"exact2", &"hash"]);
        trie.remove("a/b", |_| true);
        trie.remove("a/#", |_| true);
        trie.remove("#", |_| true);
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty branches are pruned");
    }
}
