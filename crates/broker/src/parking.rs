//! Idle plain-TCP connections, parked without a task. A connection task and its socket's registration with the
//! runtime are about 1 KB of memory, kept for as long as the client stays connected, and most of a fleet's
//! connections are idle most of the time. So a connection that has had nothing to read or write for
//! `BrokerConfig::idle_park_after` gives its socket back to the runtime and ends its task: what the client's
//! connection needs is boxed (`connection::Client`) and handed here with the socket.
//!
//! One thread watches every parked socket on a poll of its own, and resumes a connection in a new task
//! (`connection::resume`) as soon as any of these happens: its socket is readable (bytes, or the client gone); its
//! session has something for it or kicks it (both wake it through the waker it left there, `Wake`); its keep alive
//! runs out (a scan every `SCAN`). The resumed task finds what woke it the way a connection that never parked does.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

/// How often keep-alive deadlines of parked connections are looked at: a parked client that went silent is closed
/// up to this much after its one and a half keep-alive periods.
const SCAN: Duration = Duration::from_millis(500);
/// The poll's own waker (parked connections are numbered from 1).
const WAKER: Token = Token(usize::MAX);

/// The parking of one broker: started by its first idle connection.
pub(crate) struct Parking {
    shared: Arc<Shared>,
}

struct Shared {
    inbox: Mutex<Inbox>,
    waker: mio::Waker,
    /// Connections parked now (for `/metrics`).
    parked: AtomicU64,
    next_id: AtomicU64,
    /// The broker let go of its parking: the thread ends (only a broker with nothing parked is let go of).
    closed: AtomicBool,
}

/// What other threads hand the parking thread.
#[derive(Default)]
struct Inbox {
    parks: Vec<Parked>,
    woken: Vec<u64>,
}

/// A parked connection: its socket, when its keep alive runs out, and the rest of it.
pub(crate) struct Parked {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) due: Option<Instant>,
    pub(crate) wake: Arc<Wake>,
    pub(crate) client: Box<crate::connection::Client>,
}

/// The waker a parked connection leaves with its session (its signal, its kick): waking it resumes the connection.
/// Wakes before the connection has reached the parking thread are kept in `woken`, and it resumes on arrival.
pub(crate) struct Wake {
    id: u64,
    woken: AtomicBool,
    shared: Arc<Shared>,
}

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            crate::broker::lock(&self.shared.inbox).woken.push(self.id);
            let _ = self.shared.waker.wake();
        }
    }
}

impl Parking {
    /// Starts the parking thread, which resumes connections as tasks on `runtime`.
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> std::io::Result<Parking> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            waker,
            parked: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("skein-parking".into())
            .spawn(move || watch(poll, &thread_shared, &runtime))?;
        Ok(Parking { shared })
    }

    /// A waker for a connection about to park: left with its session before `park`, so that nothing that comes in
    /// between is missed.
    pub(crate) fn wake(&self) -> Arc<Wake> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Wake { id, woken: AtomicBool::new(false), shared: self.shared.clone() })
    }

    pub(crate) fn park(&self, parked: Parked) {
        crate::broker::lock(&self.shared.inbox).parks.push(parked);
        let _ = self.shared.waker.wake();
    }

    pub(crate) fn parked(&self) -> u64 {
        self.shared.parked.load(Ordering::Relaxed)
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.waker.wake();
    }
}

/// The parking thread: registers arriving connections, and resumes those whose socket, waker or keep alive says so.
fn watch(mut poll: Poll, shared: &Shared, runtime: &tokio::runtime::Handle) {
    let mut events = Events::with_capacity(1024);
    let mut parked: HashMap<u64, Parked> = HashMap::new();
    let mut next_scan = Instant::now() + SCAN;
    let mut ready = Vec::new();
    loop {
        let timeout = next_scan.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "parked connections: poll failed");
                std::thread::sleep(SCAN);
            }
            continue;
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        ready.extend(events.iter().map(|e| e.token()).filter(|t| *t != WAKER).map(|t| t.0 as u64));
        let (parks, woken) = {
            let mut inbox = crate::broker::lock(&shared.inbox);
            (std::mem::take(&mut inbox.parks), std::mem::take(&mut inbox.woken))
        };
        for p in parks {
            let id = p.wake.id;
            // Readiness from before the registration is reported by it: bytes that came while it parked are not
            // missed.
            let registered =
                poll.registry().register(&mut SourceFd(&p.stream.as_raw_fd()), Token(id as usize), Interest::READABLE);
            if let Err(e) = registered {
                tracing::warn!(error = %e, "connection could not be parked; it goes on as a task");
                runtime.spawn(crate::connection::resume(p.client, p.stream));
                continue;
            }
            if p.wake.woken.load(Ordering::Acquire) {
                ready.push(id);
            }
            parked.insert(id, p);
        }
        ready.extend(woken);
        let now = Instant::now();
        if now >= next_scan {
            ready.extend(parked.iter().filter(|(_, p)| p.due.is_some_and(|d| d <= now)).map(|(id, _)| *id));
            next_scan = now + SCAN;
        }
        for id in ready.drain(..) {
            if let Some(p) = parked.remove(&id) {
                unpark(poll.registry(), p, runtime);
            }
        }
        shared.parked.store(parked.len() as u64, Ordering::Relaxed);
    }
}

fn unpark(registry: &Registry, p: Parked, runtime: &tokio::runtime::Handle) {
    let _ = registry.deregister(&mut SourceFd(&p.stream.as_raw_fd()));
    runtime.spawn(crate::connection::resume(p.client, p.stream));
}
