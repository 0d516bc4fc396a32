//! End-to-end tests of the built `skein` binary with real clients: mosquitto_pub/mosquitto_sub, paho-mqtt,
//! MQTT.js, rumqttc, and a raw client on our codec for byte-level checks. One test binary, so one link.

mod abuse;
mod cluster;
mod metrics;
mod mosquitto;
mod mqttjs;
mod operations;
mod paho;
mod paho_v5;
mod persistence;
mod protocol;
mod rumqttc_client;
mod security;
mod seed;
mod support;
mod tls;
mod websocket;
