//! Retained messages: one per topic, looked up by topic filter when a subscription is made (MQTT 5.0 section
//! 3.3.1.3). Held in a tree of topic levels so that a filter walks only the branches it can match.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
pub struct Retained {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Retained {
    /// Stores `message` as the retained message of its topic; an empty payload clears it [MQTT-3.3.1-6]. Returns
    /// true if the topic's retained message changed.
    pub fn set(&mut self, message: Arc<Message>) -> bool {
        if message.payload.is_empty() {
            return self.clear(&message.topic);
        }
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
        true
    }

    /// Removes the retained message of `topic`; true if there was one.
    pub fn clear(&mut self, topic: &str) -> bool {
        fn go(node: &mut Node, levels: &[&str]) -> bool {
            match levels.split_first() {
                None => node.message.take().is_some(),
                Some((level, rest)) => {
                    let Some(child) = node.children.get_mut(*level) else { return false };
                    let removed = go(child, rest);
                    if child.message.is_none() && child.children.is_empty() {
                        node.children.remove(*level);
                    }
                    removed
                }
            }
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = go(&mut self.root, &levels);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Retained messages whose topic matches `filter` (a valid plain filter), `$`-topics excluded from a leading
    /// wildcard [MQTT-4.7.2-1].
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        fn collect_all(node: &Node, out: &mut Vec<Arc<Message>>) {
            out.extend(node.message.iter().cloned());
            for child in node.children.values() {
                collect_all(child, out);
            }
        }
        fn go(node: &Node, levels: &[&str], root: bool, out: &mut Vec<Arc<Message>>) {
            let Some((level, rest)) = levels.split_first() else {
                out.extend(node.message.iter().cloned());
                return;
            };
            let visible = |name: &str| !(root && name.starts_with('$'));
            match *level {
                "#" => {
                    // `a/#` matches `a` itself too.
                    if !root {
                        out.extend(node.message.iter().cloned());
                    }
                    for (name, child) in &node.children {
                        if visible(name) {
                            collect_all(child, out);
                        }
                    }
                }
                "+" => {
                    for (name, child) in &node.children {
                        if visible(name) {
                            go(child, rest, false, out);
                        }
                    }
                }
                name => {
                    if let Some(child) = node.children.get(name) {
                        go(child, rest, false, out);
                    }
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        go(&self.root, &levels, true, &mut out);
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_codec::topic;

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::system(topic.to_string(), payload, true))
    }

    #[test]
    fn set_replace_clear() {
        let mut r = Retained::default();
        r.set(msg("a/b", "1"));
        r.set(msg("a/b", "2"));
        assert_eq!(r.len(), 1);
        assert_eq!(&r.matching("a/b")[0].payload[..], b"2");
        r.set(msg("a/b", ""));
        assert!(r.is_empty());
        assert!(r.matching("#").is_empty());
        assert!(r.root.children.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn matching_agrees_with_topic_matches() {
        let topics = ["a", "a/b", "a/b/c", "a//c", "/a", "$SYS/x", "$SYS/x/y", "b/b"];
        let mut r = Retained::default();
        for t in topics {
            r.set(msg(t, "x"));
        }
        for filter in ["#", "+", "a/#", "a/+", "+/+", "+/b/#", "$SYS/#", "$SYS/+", "a//c", "/+", "+/#", "a/b/c/#"] {
            let mut got: Vec<String> = r.matching(filter).iter().map(|m| m.topic.to_string()).collect();
            got.sort();
            let mut want: Vec<String> =
                topics.iter().filter(|t| topic::matches(filter, t)).map(|t| t.to_string()).collect();
            want.sort();
            assert_eq!(got, want, "filter {filter}");
        }
    }
}
