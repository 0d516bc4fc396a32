//! MQTT 5.0 enhanced authentication through the method interface: a challenge-response method registered with the
//! broker, driven by a byte-level client over real TCP (CONNECT → AUTH 0x18 ⇄ AUTH 0x18 → CONNACK, then
//! re-authentication with AUTH 0x19).

use std::sync::Arc;

use bytes::Bytes;
use skein_broker::auth::{AuthExchange, AuthMethod, AuthStep};
use skein_broker::{Broker, BrokerConfig, SingleNode};
use skein_codec::*;

mod support;
use support::Client;

/// Sends the challenge "nonce-1"; the right answer is "nonce-1:secret".
struct Challenge;

struct Exchange {
    nonce: Option<String>,
}

impl AuthMethod for Challenge {
    fn name(&self) -> &str {
        "CHALLENGE"
    }

    fn start(&self, _client_id: &str) -> Box<dyn AuthExchange> {
        Box::new(Exchange { nonce: None })
    }
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match &self.nonce {
            None => {
                self.nonce = Some("nonce-1".into());
                AuthStep::Continue(Some(b"nonce-1".to_vec()))
            }
            Some(n) if data == Some(format!("{n}:secret").as_bytes()) => {
                AuthStep::Success { data: Some(b"welcome".to_vec()), username: Some("challenged".into()) }
            }
            Some(_) => AuthStep::Failure,
        }
    }
}

fn auth(reason_code: ReasonCode, data: &'static [u8]) -> Packet {
    let properties = Properties::from(skein_codec::PropertyValues {
        authentication_method: Some("CHALLENGE".into()),
        authentication_data: Some(Bytes::from_static(data)),
        ..Default::default()
    });
    Packet::Auth(Auth { reason_code, properties })
}

fn method_of(p: &Properties) -> Option<&str> {
    p.authentication_method.as_deref()
}

async fn broker() -> std::net::SocketAddr {
    let config = BrokerConfig { allow_anonymous: false, ..BrokerConfig::default() };
    let broker = Broker::open(config, None, Arc::new(SingleNode)).unwrap();
    broker.add_auth_method(Arc::new(Challenge));
    support::serve(broker).await
}

async fn connect(addr: std::net::SocketAddr, method: &str, id: &str) -> Client {
    let mut c = Client::open(addr).await;
    let properties = Properties::from(skein_codec::PropertyValues {
        authentication_method: Some(method.into()),
        authentication_data: Some(Bytes::from_static(b"hello")),
        ..Default::default()
    });
    c.send_connect(id, true, 30, properties).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_response_method_authenticates_and_re_authenticates() {
    let addr = broker().await;
    let mut c = connect(addr, "CHALLENGE", "enhanced").await;
    match c.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
            assert_eq!(method_of(&a.properties), Some("CHALLENGE"));
            assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"nonce-1"[..]));
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
    c.send(auth(ReasonCode::ContinueAuthentication, b"nonce-1:secret")).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::Success, "anonymous clients are refused, the method vouched");
            assert_eq!(method_of(&a.properties), Some("CHALLENGE"));
            assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"welcome"[..]));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Re-authentication on the same connection.
    c.send(auth(ReasonCode::ReAuthenticate, b"again")).await;
    assert!(matches!(c.recv().await, Some(Packet::Auth(a)) if a.reason_code == ReasonCode::ContinueAuthentication));
    c.send(auth(ReasonCode::ContinueAuthentication, b"nonce-1:secret")).await;
    assert!(matches!(c.recv().await, Some(Packet::Auth(a)) if a.reason_code == ReasonCode::Success));
    // A failed re-authentication ends the connection with 0x87.
    c.send(auth(ReasonCode::ReAuthenticate, b"again")).await;
    assert!(matches!(c.recv().await, Some(Packet::Auth(_))));
    c.send(auth(ReasonCode::ContinueAuthentication, b"nonce-1:wrong")).await;
    assert_eq!(c.recv().await, Some(Packet::Disconnect(Disconnect::new(ReasonCode::NotAuthorized))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_or_an_unknown_method_is_refused() {
    let addr = broker().await;
    let mut c = connect(addr, "CHALLENGE", "wrong").await;
    assert!(matches!(c.recv().await, Some(Packet::Auth(_))));
    c.send(auth(ReasonCode::ContinueAuthentication, b"guess")).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::NotAuthorized));
    let mut c = connect(addr, "SCRAM-SHA-256", "unknown").await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::BadAuthenticationMethod));
}
