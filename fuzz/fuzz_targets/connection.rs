//! Plays arbitrary bytes as one client's stream through the broker's connection driver; see
//! `skein_broker::fuzzing::connection`. One broker serves every input, as a long-running node would.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use skein_broker::{Broker, BrokerConfig, SingleNode};

fn runtime() -> &'static (tokio::runtime::Runtime, Arc<Broker>) {
    static RT: OnceLock<(tokio::runtime::Runtime, Arc<Broker>)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config = BrokerConfig { allow_anonymous: true, ..BrokerConfig::default() };
        let broker = rt.block_on(async { Broker::open(config, None, Arc::new(SingleNode)) }).expect("broker");
        (rt, broker)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, broker) = runtime();
    rt.block_on(skein_broker::fuzzing::connection(broker.clone(), data));
});
