//! Every idle connection keeps its `connection::serve` future for its whole life, so that future's size is part of
//! the broker's memory per connection (BENCHMARKS.md, conn scenario). Locals an async function borrows keep their
//! place in its state until their scope ends, and the largest state sets the size, so a packet left in scope or a
//! large future awaited inline in the handshake grows every connection. This catches such a change.

use std::sync::Arc;

use skein_broker::{Broker, BrokerConfig, SingleNode};

/// Measured: 608 bytes (rustc 1.95, debug and release, TCP halves), since the packet loop is a method of the
/// connection's state (`Client::run`) rather than a function of its nine parts; 648 before that, since the same task also writes (the writer
/// half, the send buffer and the wake signal are here now; a second task per connection took 384 bytes, and the
/// signals between the two 104); 616 before that; 776 while the handshake's arguments (writer, peer,
/// identity) were `serve`'s own and so part of its future for good, and `Conn` kept a copy of the client id and an
/// inline throttle; 1,920 before the handshake and teardown were boxed phases, the keep-alive one timer for the
/// connection's life and readiness polled without a future, and about 3.2 KB before the handshake's reads were kept
/// out of it. tokio rounds a task up to 128 bytes with about 104 of its own: up to 664 the task is 768 bytes, one
/// more byte makes it 896. The bound is that step.
const BOUND: usize = 664;

#[tokio::test]
async fn the_connection_future_stays_small() {
    let broker = Broker::open(BrokerConfig::default(), None, Arc::new(SingleNode)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let (r, w) = stream.into_split();
    let serve = skein_broker::connection::serve(broker, r, w, peer, None);
    let size = std::mem::size_of_val(&serve);
    println!("connection::serve future: {size} bytes");
    assert!(size <= BOUND, "connection::serve's future grew to {size} bytes (bound {BOUND}): see this file's comment");
    drop((serve, client));
}

/// Every connection's session (`SessionHandle`, in an `Arc` with 16 bytes of counts) is one allocation of 384 bytes,
/// an allocator size class; 8 bytes more put it in the next one, 448.
const SESSION_BOUND: usize = 368;

#[test]
fn the_session_stays_in_its_allocation_size() {
    let size = std::mem::size_of::<skein_broker::broker::SessionHandle>();
    println!("SessionHandle: {size} bytes");
    assert!(
        size <= SESSION_BOUND,
        "SessionHandle grew to {size} bytes (bound {SESSION_BOUND}): see this test's comment"
    );
}
