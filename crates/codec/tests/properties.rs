//! Property tests: encode then decode is the identity for arbitrary valid packets of each version; decoding
//! arbitrary bytes never panics; the filter trie agrees with a naive reference matcher.

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use skein_codec::fuzzing;
use skein_codec::topic::{self, FilterTrie};
use skein_codec::*;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V31), Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn string() -> impl Strategy<Value = ByteString> {
    "[^\u{0}]{0,12}".prop_map(ByteString::from)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = ByteString> {
    "[a-z0-9 $_é-]{1,5}(/[a-z0-9 _é-]{0,5}){0,4}".prop_map(ByteString::from)
}

fn topic_filter() -> impl Strategy<Value = String> {
    (vec(prop_oneof!["[a-c]{1,2}", Just("+".to_string()), Just(String::new())], 1..5), any::<bool>()).prop_map(
        |(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str(if f.is_empty() { "#" } else { "/#" });
            }
            if f.is_empty() { "+".into() } else { f }
        },
    )
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

/// Any property block valid in `ctx`.
fn properties(ctx: PropertyContext) -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(string()),
        of(topic_name()),
        of(bytes()),
        of(any::<u32>()),
        of(string()),
        of(any::<u16>()),
        of(string()),
        of(bytes()),
        flag(),
        of(any::<u32>()),
    );
    let b = (
        flag(),
        of(string()),
        of(string()),
        of(string()),
        of(1u16..),
        of(any::<u16>()),
        of(1u16..),
        of(0u8..=1),
        flag(),
        of(1u32..),
        (flag(), flag(), flag()),
        (vec(1u32..=268_435_455, 0..3), vec((string(), string()), 0..3)),
    );
    (a, b).prop_map(move |(a, b)| {
        let mut p = Properties::from(PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            session_expiry_interval: a.5,
            assigned_client_identifier: a.6,
            server_keep_alive: a.7,
            authentication_method: a.8,
            authentication_data: a.9,
            request_problem_information: a.10,
            will_delay_interval: a.11,
            request_response_information: b.0,
            response_information: b.1,
            server_reference: b.2,
            reason_string: b.3,
            receive_maximum: b.4,
            topic_alias_maximum: b.5,
            topic_alias: b.6,
            maximum_qos: b.7,
            retain_available: b.8,
            maximum_packet_size: b.9,
            wildcard_subscription_available: b.10.0,
            subscription_identifier_available: b.10.1,
            shared_subscription_available: b.10.2,
            subscription_identifiers: b.11.0,
            user_properties: b.11.1,
        });
        p.retain_allowed(ctx);
        if ctx != PropertyContext::Publish && ctx != PropertyContext::Subscribe {
            p.subscription_identifiers.clear();
        }
        if ctx == PropertyContext::Subscribe {
            p.subscription_identifiers.truncate(1);
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            p.authentication_method = Some("method".into());
        }
        p
    })
}

fn props_for(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v.is_v5() { properties(ctx).boxed() } else { Just(Properties::default()).boxed() }
}

fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ALL_REASON_CODES.into_iter().filter(|c| c.allowed_in(packet)).collect();
    proptest::sample::select(codes)
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (topic_name(), bytes(), qos(), any::<bool>(), props_for(v, PropertyContext::Will))
        .prop_map(|(topic, payload, qos, retain, properties)| Will { topic, payload, qos, retain, properties });
    (any::<bool>(), any::<u16>(), props_for(v, PropertyContext::Connect), string(), of(will), of(string()), of(bytes()))
        .prop_map(move |(clean_start, keep_alive, properties, client_id, will, mut username, password)| {
            if password.is_some() && username.is_none() && !v.is_v5() {
                username = Some("user".into());
            }
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
            }))
        })
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason(PacketType::ConnAck).boxed()
    } else {
        (0u8..=5).prop_map(|c| ReasonCode::from_connect_return_code(c).unwrap()).boxed()
    };
    (any::<bool>(), code, props_for(v, PropertyContext::ConnAck)).prop_map(|(sp, reason_code, properties)| {
        Packet::ConnAck(ConnAck { session_present: sp && !reason_code.is_error(), reason_code, properties })
    })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (qos(), any::<bool>(), any::<bool>(), topic_name(), 1u16.., props_for(v, PropertyContext::Publish), bytes())
        .prop_map(move |(qos, dup, retain, topic, pid, properties, payload)| {
            let at_least_once = qos != QoS::AtMostOnce;
            // 5.0: an empty topic with a Topic Alias is valid.
            let topic = if v.is_v5() && properties.topic_alias.is_some() && dup { ByteString::new() } else { topic };
            Packet::Publish(Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: if at_least_once { pid } else { 0 },
                properties,
                payload,
            })
        })
}

fn ack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let kind = prop_oneof![
        Just(PacketType::PubAck),
        Just(PacketType::PubRec),
        Just(PacketType::PubRel),
        Just(PacketType::PubComp)
    ];
    kind.prop_flat_map(move |kind| {
        let code = if v.is_v5() { reason(kind).boxed() } else { Just(ReasonCode::Success).boxed() };
        (Just(kind), 1u16.., code, props_for(v, PropertyContext::PubAck))
    })
    .prop_map(|(kind, packet_id, reason_code, properties)| {
        let a = Ack { packet_id, reason_code, properties };
        match kind {
            PacketType::PubAck => Packet::PubAck(a),
            PacketType::PubRec => Packet::PubRec(a),
            PacketType::PubRel => Packet::PubRel(a),
            _ => Packet::PubComp(a),
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
        if v.is_v5() {
            let retain_handling =
                [RetainHandling::SendAtSubscribe, RetainHandling::SendIfNew, RetainHandling::DoNotSend][rh as usize];
            SubscriptionOptions { qos, no_local: nl, retain_as_published: rap, retain_handling }
        } else {
            SubscriptionOptions { qos, ..Default::default() }
        }
    });
    (1u16.., props_for(v, PropertyContext::Subscribe), vec((topic_filter().prop_map(ByteString::from), options), 1..4))
        .prop_map(|(packet_id, properties, filters)| Packet::Subscribe(Subscribe { packet_id, properties, filters }))
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason(PacketType::SubAck).boxed()
    } else {
        proptest::sample::select(vec![0u8, 1, 2, 0x80])
            .prop_map(|c| ReasonCode::from_v3_suback_code(c).unwrap())
            .boxed()
    };
    (1u16.., props_for(v, PropertyContext::SubAck), vec(code, 1..4)).prop_map(
        |(packet_id, properties, reason_codes)| Packet::SubAck(SubAck { packet_id, properties, reason_codes }),
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (1u16.., props_for(v, PropertyContext::Unsubscribe), vec(topic_filter().prop_map(ByteString::from), 1..4)).prop_map(
        |(packet_id, properties, filters)| Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters }),
    )
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() { vec(reason(PacketType::UnsubAck), 1..4).boxed() } else { Just(vec![]).boxed() };
    (1u16.., props_for(v, PropertyContext::UnsubAck), codes).prop_map(|(packet_id, properties, reason_codes)| {
        Packet::UnsubAck(UnsubAck { packet_id, properties, reason_codes })
    })
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (reason(PacketType::Disconnect), properties(PropertyContext::Disconnect))
        .prop_map(|(reason_code, properties)| Packet::Disconnect(Disconnect { reason_code, properties }))
        .boxed()
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(PacketType::Auth), properties(PropertyContext::Auth))
        .prop_map(|(reason_code, properties)| Packet::Auth(Auth { reason_code, properties }))
}

/// Any valid packet of `v`, with every packet type equally likely.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        ack(v),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v),
    ];
    if v.is_v5() { prop_oneof![10 => common, 1 => auth()].boxed() } else { common.boxed() }
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

/// The reference matcher: the rules of MQTT 5.0 section 4.7 written out level by level, recursively.
fn reference_match(filter: &[&str], topic: &[&str], first: bool) -> bool {
    if first
        && topic.first().is_some_and(|t| t.starts_with('$'))
        && filter.first().is_some_and(|f| *f == "+" || *f == "#")
    {
        return false;
    }
    match (filter.split_first(), topic.split_first()) {
        (None, None) => true,
        (Some((&"#", [])), _) => true,
        (Some((&"+", fr)), Some((_, tr))) => reference_match(fr, tr, false),
        (Some((f, fr)), Some((t, tr))) => f == t && reference_match(fr, tr, false),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity((v, p) in versioned_packet()) {
        fuzzing::check_round_trip(&p, v);
    }

    #[test]
    fn a_stream_of_packets_decodes_in_any_split((v, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..5))), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for p in &packets {
            p.encode(v, &mut wire).unwrap();
        }
        let cut = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut got = Vec::new();
        while let Some(p) = decode(&mut buf, v, MAX_PACKET_SIZE).unwrap() { got.push(p) }
        buf.extend_from_slice(&wire[cut..]);
        while let Some(p) = decode(&mut buf, v, MAX_PACKET_SIZE).unwrap() { got.push(p) }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic(v in version(), data in vec(any::<u8>(), 0..256)) {
        fuzzing::packet_stream(&data, v);
    }

    #[test]
    fn mutated_valid_packets_never_panic((v, p) in versioned_packet(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut wire = BytesMut::new();
        p.encode(v, &mut wire).unwrap();
        let mut data = wire.to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] ^= byte;
        }
        fuzzing::packet_stream(&data, v);
    }

    #[test]
    fn trie_and_matches_agree_with_the_reference(
        filters in vec(topic_filter(), 1..30),
        topic in "(\\$?[a-c]{0,2})(/[a-c]{0,2}){0,4}",
    ) {
        prop_assume!(topic::validate_topic_name(&topic).is_ok());
        let mut trie = FilterTrie::new();
        for (i, f) in filters.iter().enumerate() {
            prop_assert_eq!(topic::validate_topic_filter(f), Ok(()));
            trie.insert(f, i);
        }
        let t: Vec<&str> = topic.split('/').collect();
        let mut expected: Vec<usize> = filters.iter().enumerate()
            .filter(|(_, f)| reference_match(&f.split('/').collect::<Vec<_>>(), &t, true))
            .map(|(i, _)| i).collect();
        for (i, f) in filters.iter().enumerate() {
            prop_assert_eq!(topic::matches(f, &topic), expected.contains(&i), "matches({:?}, {:?})", f, &topic);
        }
        let mut got: Vec<usize> = trie.matches(&topic).into_iter().copied().collect();
        got.sort();
        expected.sort();
        prop_assert_eq!(got, expected);
        for f in &filters {
            trie.remove(f, |_| true);
        }
        prop_assert!(trie.is_empty());
    }
}
