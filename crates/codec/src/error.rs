//! Decode and encode errors. Each malformed-packet rule of MQTT 3.1.1 and 5.0 is its own variant, and each
//! variant names the MQTT 5.0 reason code a server sends when it closes the connection for it.

use crate::reason::ReasonCode;
use crate::topic::TopicError;
use crate::types::PacketType;

/// Why bytes from the network are not a valid packet. The connection that sent them is to be closed; for MQTT 5.0
/// with a DISCONNECT (or CONNACK, before the session exists) carrying [`DecodeError::reason_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// MQTT 5.0 section 1.5.5 / 3.1.1 section 2.2.3: a Variable Byte Integer uses at most four bytes, and the
    /// fewest that can hold its value [MQTT-1.5.5-1].
    #[error("variable byte integer is longer than four bytes or not in its shortest form")]
    MalformedVariableInteger,
    /// The fixed header claims more bytes than the receiver accepts (v5 Maximum Packet Size, or `message_size_limit`).
    #[error("packet of {size} bytes is larger than the maximum of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0 is reserved in every version; 15 (AUTH) before MQTT 5.0.
    #[error("packet type {0} is reserved")]
    ReservedPacketType(u8),
    /// [MQTT-2.2.2-1] [MQTT-2.2.2-2]: reserved flag bits of the fixed header must hold their fixed values.
    #[error("{packet} has fixed header flags {flags:#06b}, which are reserved")]
    InvalidHeaderFlags { packet: PacketType, flags: u8 },
    /// The contents end before a field does.
    #[error("{packet} ends in the middle of a field")]
    Truncated { packet: PacketType },
    /// Bytes are left over after the last field the packet can have.
    #[error("{packet} has {extra} bytes after its last field")]
    TrailingBytes { packet: PacketType, extra: usize },
    /// A packet of fixed size has another remaining length (for example PINGREQ with a body).
    #[error("{packet} must have a remaining length of {expected}, not {actual}")]
    InvalidRemainingLength { packet: PacketType, expected: usize, actual: usize },
    /// [MQTT-3.3.1-4]: QoS 3 is not a QoS.
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    /// [MQTT-3.3.1-2]: the DUP flag must be 0 for QoS 0 messages.
    #[error("PUBLISH at QoS 0 has the DUP flag set")]
    DupOnQoS0,
    /// [MQTT-2.2.1-3] [MQTT-2.3.1-1]: SUBSCRIBE, UNSUBSCRIBE, PUBLISH at QoS > 0 and their acknowledgements carry
    /// a non-zero packet identifier.
    #[error("{packet} has packet identifier 0")]
    PacketIdZero { packet: PacketType },
    /// [MQTT-1.5.3-1] / [MQTT-1.5.4-1]: strings are well-formed UTF-8 (no surrogates).
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// [MQTT-1.5.3-2] / [MQTT-1.5.4-2]: strings do not contain U+0000.
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// [MQTT-3.3.2-2] and [MQTT-3.1.3-11]: a topic name (PUBLISH, will, response topic) is not a valid topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// [MQTT-3.3.2-8]: Topic Alias 0 is not permitted.
    #[error("Topic Alias 0 is not permitted")]
    TopicAliasZero,
    /// MQTT 5.0 section 3.3.2.1: an empty topic name is a protocol error unless a Topic Alias comes with it.
    #[error("PUBLISH has an empty topic name and no Topic Alias")]
    EmptyTopicWithoutAlias,
    /// [MQTT-3.1.2-1]: the protocol name is `MQTT` (or `MQIsdp` for 3.1).
    #[error("protocol name {0:?} is neither MQTT nor MQIsdp")]
    InvalidProtocolName(String),
    /// [MQTT-3.1.2-2]: a protocol level the server does not support (or a name/level pair that does not exist).
    #[error("protocol level {level} with protocol name {name:?} is not supported; use 3 (MQIsdp), 4 or 5 (MQTT)")]
    UnsupportedProtocolLevel { name: String, level: u8 },
    /// [MQTT-3.1.2-3]: the reserved bit of the CONNECT flags is 0.
    #[error("CONNECT has its reserved flag bit set")]
    ConnectReservedFlag,
    /// [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]: no will means will QoS 0 and will retain 0.
    #[error("CONNECT sets will QoS or will retain without the will flag")]
    WillFlagsWithoutWill,
    /// [MQTT-3.1.2-14]: will QoS 3.
    #[error("CONNECT has will QoS 3")]
    InvalidWillQoS,
    /// [MQTT-3.1.2-22] (3.1 and 3.1.1 only): a password needs a user name.
    #[error("CONNECT has a password but no user name")]
    PasswordWithoutUsername,
    /// [MQTT-3.2.2-1]: bits 7-1 of the CONNACK acknowledge flags are reserved.
    #[error("CONNACK acknowledge flags {0:#04x} set reserved bits")]
    InvalidConnAckFlags(u8),
    /// [MQTT-3.2.2-4] / [MQTT-3.2.2-6]: session present is 0 when the connection is refused.
    #[error("CONNACK has session present set with a failure code")]
    SessionPresentOnError,
    /// A reason (or return) code the packet type does not allow.
    #[error("{packet} does not allow reason code {code:#04x}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
    /// MQTT 5.0 section 2.2.2.2: an identifier that is no property at all.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// MQTT 5.0 section 2.2.2.2: a property that is not valid for this packet.
    #[error("property {id:#04x} is not allowed in {context}")]
    PropertyNotAllowed { id: u8, context: &'static str },
    /// MQTT 5.0 section 3: it is a protocol error to include most properties more than once.
    #[error("property {0:#04x} is included more than once")]
    DuplicateProperty(u8),
    /// A property value the specification rules out (a flag that is not 0 or 1, Receive Maximum 0, Maximum Packet
    /// Size 0, Subscription Identifier 0, Maximum QoS 2): a protocol error.
    #[error("property {id:#04x} has the value {value}, which is not permitted")]
    InvalidPropertyValue { id: u8, value: u32 },
    /// MQTT 5.0 section 3.1.2.11.10: Authentication Data without Authentication Method is a protocol error.
    #[error("Authentication Data without an Authentication Method")]
    AuthDataWithoutMethod,
    /// [MQTT-3.8.3-3] / [MQTT-3.10.3-2]: SUBSCRIBE and UNSUBSCRIBE carry at least one topic filter.
    #[error("{packet} has no topic filter")]
    NoTopicFilters { packet: PacketType },
    /// SUBACK and (v5) UNSUBACK carry at least one reason code.
    #[error("{packet} has no reason code")]
    NoReasonCodes { packet: PacketType },
    /// [MQTT-3.8.3-4] (3.1.1) / [MQTT-3.8.3-5] (5.0): reserved bits of the subscription options are 0, QoS is not 3.
    #[error("subscription options byte {0:#04x} sets reserved bits or QoS 3")]
    InvalidSubscriptionOptions(u8),
    /// MQTT 5.0 section 3.8.3.1: Retain Handling 3 is a protocol error.
    #[error("Retain Handling 3 is not permitted")]
    InvalidRetainHandling,
}

impl DecodeError {
    /// The MQTT 5.0 reason code for this error: what the DISCONNECT (or CONNACK) closing the connection carries.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName(_) | UnsupportedProtocolLevel { .. } => ReasonCode::UnsupportedProtocolVersion,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod
            | EmptyTopicWithoutAlias
            | NoTopicFilters { .. }
            | InvalidRetainHandling
            | DupOnQoS0
            | PacketIdZero { .. } => ReasonCode::ProtocolError,
            MalformedVariableInteger
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidRemainingLength { .. }
            | InvalidQoS
            | InvalidUtf8
            | NullCharacter
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | InvalidWillQoS
            | PasswordWithoutUsername
            | InvalidConnAckFlags(_)
            | SessionPresentOnError
            | InvalidReasonCode { .. }
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | NoReasonCodes { .. }
            | InvalidSubscriptionOptions(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be written. These are bugs or limits of the sender, never of network input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// [MQTT-1.5.4]: strings and binary data are at most 65,535 bytes.
    #[error("a string or binary field of {0} bytes is longer than 65,535 bytes")]
    FieldTooLong(usize),
    /// [MQTT-2.2.3]: the remaining length is at most 268,435,455 bytes.
    #[error("packet body of {0} bytes is longer than 268,435,455 bytes")]
    PacketTooLarge(usize),
    /// A PUBLISH at QoS > 0, SUBSCRIBE, UNSUBSCRIBE or an acknowledgement with packet identifier 0.
    #[error("{packet} needs a non-zero packet identifier")]
    PacketIdZero { packet: PacketType },
    /// AUTH exists only in MQTT 5.0.
    #[error("{packet} cannot be sent with protocol {version}")]
    NotInVersion { packet: PacketType, version: crate::ProtocolVersion },
    /// A value that cannot be represented on the wire (Subscription Identifier above 268,435,455, and the like).
    #[error("{0}")]
    InvalidValue(&'static str),
}
