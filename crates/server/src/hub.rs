//! Fan-out: which users have which live connections, and delivery of frames
//! to them. This is the only place that writes to a connection's queue.
//!
//! Each connection has a queue bounded in frames and in bytes. Publishing
//! never waits: a connection whose queue is full is a slow consumer and is
//! disconnected with close code [`CLOSE_SLOW_CONSUMER`]. It loses nothing: on reconnect it resumes from
//! the last position it applied. (A lagging client must never stall fan-out
//! for everyone else, nor silently miss events.)

use confab_protocol::{ConversationId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// A frame as it goes on the wire, encoded once for every queue it enters.
pub fn frame(f: &confab_protocol::ServerFrame) -> crate::error::Result<Arc<str>> {
    serde_json::to_string(f).map(Arc::from).map_err(|e| crate::error::ApiError::internal("serialize frame", e))
}

/// Close codes the server uses (4000–4999 are application codes).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
pub const CLOSE_SESSION_REVOKED: u16 = 4001;
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Why the server is closing a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    session: Uuid,
    queue: Queue,
    kick: watch::Sender<Option<Kick>>,
}

impl Conn {
    fn kick(&self, kick: Kick) {
        self.kick.send_replace(Some(kick));
    }

    /// Queues `frame`; a connection that cannot take it is a slow consumer
    /// and is closed (it resumes on reconnect).
    fn deliver(&self, user: UserId, frame: &Arc<str>) {
        if !self.queue.offer(frame.clone()) && !self.queue.tx.is_closed() {
            tracing::warn!(%user, conn = self.id, "slow consumer: disconnecting; it will resume");
            self.kick(SLOW);
        }
    }
}

/// The kick for a connection whose queue overflowed.
pub const SLOW: Kick = Kick { code: CLOSE_SLOW_CONSUMER, reason: "slow_consumer" };

/// The sending side of one connection's queue, with its byte count. The
/// writer reports each frame it takes through [`Queue::meter`].
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Arc<str>>,
    bytes: Arc<AtomicUsize>,
    budget: usize,
}

impl Queue {
    /// Counts `len` bytes in, unless that would pass the budget.
    fn reserve(&self, len: usize) -> bool {
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > self.budget {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues a frame without waiting. False when the queue is over its
    /// frame count or byte budget (or closed): the caller kicks.
    pub fn offer(&self, frame: Arc<str>) -> bool {
        let len = frame.len();
        if !self.reserve(len) {
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues a reply, waiting for room in frames (backpressure on the
    /// reader); false when over the byte budget or closed.
    pub async fn reply(&self, frame: Arc<str>) -> bool {
        let len = frame.len();
        if !self.reserve(len) {
            return false;
        }
        if self.tx.send(frame).await.is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The byte count alone, for the writer: holding a sender would keep
    /// the queue open after everyone else let go of it.
    pub fn meter(&self) -> Meter {
        Meter(self.bytes.clone())
    }
}

/// The writer's side of a queue's byte count.
pub struct Meter(Arc<AtomicUsize>);

impl Meter {
    /// The writer took a frame of `len` bytes off the queue.
    pub fn sent(&self, len: usize) {
        self.0.fetch_sub(len, Ordering::AcqRel);
    }
}

/// What a connection task holds: its queue and its kick signal.
pub struct Registration {
    pub id: u64,
    /// The connection's queue: replies are sent here too, so they stay in
    /// order with events.
    pub queue: Queue,
    pub rx: mpsc::Receiver<Arc<str>>,
    /// Lets the connection close itself the same way the hub does.
    pub kick: watch::Sender<Option<Kick>>,
    pub kicked: watch::Receiver<Option<Kick>>,
    /// True if this is the user's first live connection (they came online).
    pub first: bool,
}

pub struct Hub {
    conns: Mutex<HashMap<UserId, Vec<Conn>>>,
    typing: Mutex<HashMap<(UserId, ConversationId), Instant>>,
    next_id: AtomicU64,
    max_per_user: usize,
    queue_len: usize,
    queue_bytes: usize,
}

/// A typing notice is forwarded at most this often per user and conversation.
const TYPING_THROTTLE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the maps inconsistent
    // (each operation is a single insert/remove), so recover from poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(max_per_user: usize, queue_len: usize, queue_bytes: usize) -> Self {
        Hub {
            conns: Mutex::new(HashMap::new()),
            typing: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_per_user,
            queue_len,
            queue_bytes,
        }
    }

    /// Registers a connection whose queue starts with `first` (the welcome,
    /// so no event can overtake it), or returns `None` when the user already
    /// has the maximum number of connections.
    pub fn register(&self, user: UserId, session: Uuid, first: Arc<str>) -> Option<Registration> {
        self.register_beside(user, session, first, 0)
    }

    /// [`Hub::register`] for a user who has `elsewhere` connections on
    /// other nodes (they count towards the limit).
    pub fn register_beside(
        &self,
        user: UserId,
        session: Uuid,
        first: Arc<str>,
        elsewhere: usize,
    ) -> Option<Registration> {
        let mut conns = lock(&self.conns);
        let list = conns.entry(user).or_default();
        if list.len() + elsewhere >= self.max_per_user {
            if list.is_empty() {
                conns.remove(&user);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_len);
        let queue = Queue { tx, bytes: Arc::new(AtomicUsize::new(0)), budget: self.queue_bytes };
        // Cannot fail: the queue is new and has room.
        let _ = queue.offer(first);
        let (kick, kicked) = watch::channel(None);
        let is_first = list.is_empty();
        list.push(Conn { id, session, queue: queue.clone(), kick: kick.clone() });
        Some(Registration { id, queue, rx, kick, kicked, first: is_first })
    }

    /// Removes a connection; returns true if it was the user's last one.
    pub fn unregister(&self, user: UserId, id: u64) -> bool {
        let mut conns = lock(&self.conns);
        let Some(list) = conns.get_mut(&user) else { return false };
        let before = list.len();
        list.retain(|c| c.id != id);
        let removed = list.len() < before;
        if list.is_empty() {
            conns.remove(&user);
        }
        removed && !conns.contains_key(&user)
    }

    /// How many connections `user` has here.
    pub fn connections(&self, user: UserId) -> usize {
        lock(&self.conns).get(&user).map_or(0, Vec::len)
    }

    /// Every user connected here, with their number of connections.
    pub fn connection_counts(&self) -> Vec<(UserId, usize)> {
        lock(&self.conns).iter().map(|(u, c)| (*u, c.len())).collect()
    }

    pub fn is_online(&self, user: UserId) -> bool {
        lock(&self.conns).contains_key(&user)
    }

    /// Those of `users` who are online, under one lock.
    pub fn online_among(&self, users: &[UserId]) -> Vec<UserId> {
        let conns = lock(&self.conns);
        users.iter().copied().filter(|u| conns.contains_key(u)).collect()
    }

    /// Queues `frame` on every connection of every user in `users`.
    pub fn publish(&self, users: &[UserId], frame: Arc<str>) {
        let conns = lock(&self.conns);
        for user in users {
            for conn in conns.get(user).into_iter().flatten() {
                conn.deliver(*user, &frame);
            }
        }
    }

    /// Queues `frame` on one connection of `user`.
    pub fn publish_conn(&self, user: UserId, conn: u64, frame: Arc<str>) {
        let conns = lock(&self.conns);
        for c in conns.get(&user).into_iter().flatten().filter(|c| c.id == conn) {
            c.deliver(user, &frame);
        }
    }

    /// Queues `frame` on every connection of `user` but `except`.
    pub fn publish_user_except(&self, user: UserId, except: u64, frame: Arc<str>) {
        let conns = lock(&self.conns);
        for c in conns.get(&user).into_iter().flatten().filter(|c| c.id != except) {
            c.deliver(user, &frame);
        }
    }

    /// Closes every connection authenticated with `session` (after logout).
    pub fn kick_session(&self, session: Uuid) {
        for conn in lock(&self.conns).values().flatten().filter(|c| c.session == session) {
            conn.kick(Kick { code: CLOSE_SESSION_REVOKED, reason: "session_revoked" });
        }
    }

    /// Closes every connection (graceful shutdown).
    pub fn kick_all(&self) {
        self.kick_all_with(Kick { code: CLOSE_GOING_AWAY, reason: "server_shutdown" });
    }

    /// Closes every connection with `kick`.
    pub fn kick_all_with(&self, kick: Kick) {
        for conn in lock(&self.conns).values().flatten() {
            conn.kick(kick);
        }
    }

    /// Whether `session` of `user` has a connection here.
    pub fn has_session(&self, user: UserId, session: Uuid) -> bool {
        lock(&self.conns).get(&user).is_some_and(|c| c.iter().any(|c| c.session == session))
    }

    /// The device sessions connected here.
    pub fn sessions(&self) -> Vec<Uuid> {
        let mut sessions: Vec<Uuid> = lock(&self.conns).values().flatten().map(|c| c.session).collect();
        sessions.sort_unstable();
        sessions.dedup();
        sessions
    }

    /// Whether a typing notice from `user` in `conversation` should be
    /// forwarded now (throttled per pair).
    pub fn typing_allowed(&self, user: UserId, conversation: ConversationId) -> bool {
        let now = Instant::now();
        let mut typing = lock(&self.typing);
        if typing.len() > 10_000 {
            typing.retain(|_, t| now.duration_since(*t) < TYPING_THROTTLE);
        }
        match typing.get(&(user, conversation)) {
            Some(t) if now.duration_since(*t) < TYPING_THROTTLE => false,
            _ => {
                typing.insert((user, conversation), now);
                true
            }
        }
    }

    /// Forgets a typing throttle (the user sent a message, so the next
    /// keystroke should show again at once).
    pub fn typing_reset(&self, user: UserId, conversation: ConversationId) {
        lock(&self.typing).remove(&(user, conversation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_kicks_only_the_slow_connection() {
        let hub = Hub::new(5, 2, 1 << 20);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ra = hub.register(a, Uuid::nil(), Arc::from("w")).expect("room");
        let mut rb = hub.register(b, Uuid::nil(), Arc::from("w")).expect("room");
        assert_eq!(rb.rx.try_recv().as_deref().ok(), Some("w"), "the first frame comes first");
        for i in 0..3 {
            hub.publish(&[a, b], Arc::from(format!("{i}")));
            // b keeps up, a does not.
            assert!(rb.rx.try_recv().is_ok());
        }
        assert_eq!(ra.kicked.borrow().map(|k| k.code), Some(CLOSE_SLOW_CONSUMER));
        assert!(rb.kicked.borrow().is_none());
    }

    #[test]
    fn the_byte_budget_kicks_before_the_frame_count() {
        let hub = Hub::new(5, 1000, 100);
        let a = Uuid::now_v7();
        let ra = hub.register(a, Uuid::nil(), Arc::from("w")).expect("room");
        hub.publish(&[a], Arc::from("x".repeat(60)));
        assert!(ra.kicked.borrow().is_none());
        hub.publish(&[a], Arc::from("x".repeat(60)));
        assert_eq!(ra.kicked.borrow().map(|k| k.code), Some(CLOSE_SLOW_CONSUMER));
    }

    #[test]
    fn connection_limit_and_presence() {
        let hub = Hub::new(2, 8, 1 << 20);
        let u = Uuid::now_v7();
        let r1 = hub.register(u, Uuid::nil(), Arc::from("w")).expect("first");
        assert!(r1.first);
        let r2 = hub.register(u, Uuid::nil(), Arc::from("w")).expect("second");
        assert!(!r2.first);
        assert!(hub.register(u, Uuid::nil(), Arc::from("w")).is_none());
        assert!(!hub.unregister(u, r1.id));
        assert!(hub.is_online(u));
        assert!(hub.unregister(u, r2.id));
        assert!(!hub.is_online(u));
    }

    #[test]
    fn typing_is_throttled_per_pair() {
        let hub = Hub::new(2, 8, 1 << 20);
        let (u, c) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(hub.typing_allowed(u, c));
        assert!(!hub.typing_allowed(u, c));
        assert!(hub.typing_allowed(u, Uuid::now_v7()));
        hub.typing_reset(u, c);
        assert!(hub.typing_allowed(u, c));
    }
}
