//! Retained messages in the Raft log and its snapshots as base64 strings, not JSON arrays of numbers: a 5 MiB
//! message was some 18 MB of JSON, slow to write and to parse (a follower's append then outlasted the
//! heartbeat interval the leader gives it, and the leader lost its quorum). Entries and snapshots written before
//! read as they did: an array of numbers is still taken.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Bytes to write as base64.
struct Out<'a>(&'a [u8]);

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(self.0))
    }
}

/// Bytes read from base64, or from an array of numbers (as written before).
struct In(Vec<u8>);

impl<'de> Deserialize<'de> for In {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<In, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = In;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("base64 text or an array of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<In, E> {
                STANDARD.decode(v).map(In).map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<In, E> {
                Ok(In(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<In, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(In(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `Command::Retain`'s changes.
pub mod changes {
    use super::*;

    type Changes = Vec<(u64, String, Option<Vec<u8>>)>;

    pub fn serialize<S: Serializer>(changes: &Changes, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(changes.iter().map(|(seq, topic, m)| (seq, topic, m.as_deref().map(Out))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Changes, D::Error> {
        let read: Vec<(u64, String, Option<In>)> = Deserialize::deserialize(d)?;
        Ok(read.into_iter().map(|(seq, topic, m)| (seq, topic, m.map(|m| m.0))).collect())
    }
}

/// `ClusterState::retained`.
pub mod map {
    use super::*;

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, Out(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let read: BTreeMap<String, In> = Deserialize::deserialize(d)?;
        Ok(read.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{ClusterState, Command};

    #[test]
    fn retained_messages_are_base64_and_old_arrays_still_read() {
        let cmd =
            Command::Retain { node: 1, changes: vec![(7, "t".into(), Some(vec![0, 1, 255])), (8, "u".into(), None)] };
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(json.contains(r#""AAH/""#), "{json}");
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        let old = r#"{"Retain":{"node":1,"changes":[[7,"t",[0,1,255]],[8,"u",null]]}}"#;
        assert_eq!(serde_json::from_str::<Command>(old).unwrap(), cmd);

        let mut st = ClusterState::default();
        st.apply(&cmd);
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains(r#""retained":{"t":"AAH/"}"#), "{json}");
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), st);
        let old = json.replace(r#""retained":{"t":"AAH/"}"#, r#""retained":{"t":[0,1,255]}"#);
        assert_eq!(serde_json::from_str::<ClusterState>(&old).unwrap(), st);
    }
}
