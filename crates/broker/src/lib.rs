//! One Skein node's MQTT broker: sessions, topic routing, QoS 0/1/2, retained messages, wills, persistent sessions
//! in sled, `$SYS` topics and the limits Mosquitto users know.
//!
//! It owns MQTT semantics above the wire format (`skein-codec`) and below the cluster: it knows the cluster only
//! through the [`Cluster`] trait and runs alone with [`SingleNode`]. It does not parse configuration files or
//! flags, and opens no listening sockets itself: [`listener::serve_tcp`] takes one that the binary bound.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod fuzzing;
pub mod listener;
pub mod message;
mod parking;
pub mod retained;
pub mod router;
pub mod session;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;
pub mod websocket;

pub use broker::{Broker, Relaying};
pub use cluster::{Cluster, SingleNode};
pub use config::BrokerConfig;
pub use store::StoreError;
