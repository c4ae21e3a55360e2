//! Several server nodes over one shared database: NATS is the doorbell,
//! the log in the database is the truth (see `docs/architecture.md`).
//!
//! After a commit, the node that wrote an event publishes it on NATS.
//! Every node delivers each conversation's events to its own sockets in
//! `pos` order, whoever wrote them: a [`Track`] per conversation holds the
//! next position it expects and parks anything that arrives early. A gap
//! that NATS does not fill within [`GAP_WAIT`] is filled from the
//! database. A node whose NATS link dropped, or whose subscription lost
//! messages, reads from the database every event committed since a little
//! before the loss ([`Cluster::sweep`]) and asks the others to do the same,
//! so clients get everything, late rather than never.
//!
//! Ephemeral things go over NATS too, best-effort: typing, presence,
//! receipt frames, kicks of revoked sessions, and each node's connected
//! users (for presence and the per-user connection cap across nodes).

use crate::hub::{frame, Hub};
use crate::store::Store;
use bytes::Bytes;
use confab_protocol::{ConvEvent, ConversationId, EventBody, Millis, ServerFrame, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Every node publishes and subscribes under this prefix.
const SUBJECT_EVENTS: &str = "confab.events";
const SUBJECT_EPHEMERAL: &str = "confab.ephemeral";
const SUBJECT_ALL: &str = "confab.>";
/// How long an early event waits for the ones before it to arrive over
/// NATS before they are read from the database.
pub const GAP_WAIT: Duration = Duration::from_millis(250);
/// After a loss, events are read back from this long before it: other
/// nodes' clocks and commits in flight.
const SWEEP_MARGIN_MS: Millis = 5_000;
/// Events one sweep page reads (each at most a frame: 64 KiB).
const SWEEP_PAGE: u32 = 256;
/// Bytes of events one gap fill reads at a time.
const FILL_BUDGET: usize = 1 << 20;
/// Early events one conversation may park; past this the gap is given up
/// (clients fill it themselves from the log, as after any gap).
const MAX_PENDING: usize = 512;
/// Bytes of messages waiting to go out to NATS; past this, they are dropped
/// and the others are told to read the log instead.
const OUTBOX_BYTES: usize = 64 * 1024 * 1024;
/// How often a node tells the others which users it has connected, and
/// how long the others believe it.
const HEARTBEAT: Duration = Duration::from_secs(5);
const PEER_TTL: Duration = Duration::from_secs(15);
/// Users per presence message (a NATS message is at most 1 MiB).
const PRESENCE_CHUNK: usize = 5_000;
/// A track with nothing pending is forgotten after this long unused
/// (longer than a sweep reaches back, so a sweep finds the tracks of what
/// was delivered).
const TRACK_IDLE: Duration = Duration::from_secs(600);
/// The furthest a sweep reads back. A longer loss closes this node's
/// sockets instead: each client then resumes from its own position.
const MAX_SWEEP_MS: Millis = 5 * 60 * 1000;
/// How often the sessions of this node's sockets are checked against the
/// database (a revocation on another node whose kick NATS lost).
const SESSION_CHECK: Duration = Duration::from_secs(10);

/// What the cluster needs of the node it runs in: its sockets, its store,
/// and itself (the service implements it, so this module depends on
/// neither the service nor its requests).
pub trait Node: Send + Sync + 'static {
    fn hub(&self) -> &Hub;
    fn store(&self) -> &Arc<dyn Store>;
    fn cluster(&self) -> Option<&Arc<Cluster>>;
}

/// What nodes tell each other.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    /// A committed event, and who it is for.
    Event { node: Uuid, recipients: Vec<UserId>, event: ConvEvent },
    /// A frame for these users' connections, wherever they are.
    Frame { node: Uuid, users: Vec<UserId>, frame: String },
    /// Close the connections of a revoked session.
    Kick { node: Uuid, session: Uuid },
    /// How many connections each of these users has on `node` (0: none).
    Presence { node: Uuid, users: Vec<(UserId, usize)> },
    /// `node` may have lost doorbells since `since`: read the log.
    Resync { node: Uuid, since: Millis },
    /// `node` just joined: tell it who is connected where.
    Hello { node: Uuid },
    /// `node` is shutting down: its connections are gone.
    Leave { node: Uuid },
}

/// The delivery state of one conversation on this node.
struct Track {
    /// The next position to deliver.
    next: i64,
    /// Events that came before their turn, and their recipients.
    pending: BTreeMap<i64, (ConvEvent, Vec<UserId>)>,
    /// Since when the head of `pending` has waited.
    gap_since: Option<Instant>,
    touched: Instant,
}

fn event_conversation(pending: &BTreeMap<i64, (ConvEvent, Vec<UserId>)>) -> String {
    pending.values().next().map(|(e, _)| e.conversation.to_string()).unwrap_or_default()
}

/// What this node knows about another.
struct Peer {
    users: HashMap<UserId, (usize, Instant)>,
}

pub struct Cluster {
    node: Uuid,
    out: mpsc::Sender<(&'static str, Bytes)>,
    out_bytes: Arc<AtomicUsize>,
    tracks: Mutex<HashMap<ConversationId, Track>>,
    peers: Mutex<HashMap<Uuid, Peer>>,
    connected: Arc<AtomicBool>,
    /// Set when a doorbell could not be sent: the others are told to read
    /// the log from then once the link works again.
    dropped_since: Arc<Mutex<Option<Millis>>>,
    client: async_nats::Client,
    link_events: Mutex<Option<mpsc::UnboundedReceiver<async_nats::Event>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each operation leaves the maps whole; recover from a poisoned lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Connects to NATS at `url`. A node starts even while NATS is down (it
    /// keeps trying, and its clients are served from the log meanwhile).
    pub async fn connect(url: &str) -> anyhow::Result<Arc<Cluster>> {
        let node = Uuid::now_v7();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let options = async_nats::ConnectOptions::new()
            .name(format!("confab-server {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(1 << 16)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempt.min(5) as u32)).min(2_000))
            })
            .event_callback({
                let connected = connected.clone();
                move |event| {
                    match event {
                        async_nats::Event::Connected => connected.store(true, Ordering::Relaxed),
                        async_nats::Event::Disconnected => connected.store(false, Ordering::Relaxed),
                        _ => {}
                    }
                    let _ = events_tx.send(event);
                    async {}
                }
            });
        let client = options.connect(url).await?;
        if client.connection_state() == async_nats::connection::State::Connected {
            connected.store(true, Ordering::Relaxed);
        }
        let (out, mut rx) = mpsc::channel::<(&'static str, Bytes)>(1 << 16);
        let out_bytes = Arc::new(AtomicUsize::new(0));
        let dropped_since: Arc<Mutex<Option<Millis>>> = Arc::default();
        {
            let (client, out_bytes, dropped) = (client.clone(), out_bytes.clone(), dropped_since.clone());
            tokio::spawn(async move {
                while let Some((subject, payload)) = rx.recv().await {
                    out_bytes.fetch_sub(payload.len(), Ordering::Relaxed);
                    metrics::gauge!("confab_fanout_queue_depth").set(rx.len() as f64);
                    if let Err(e) = client.publish(subject, payload).await {
                        tracing::warn!(%e, "cannot publish to NATS");
                        if subject == SUBJECT_EVENTS {
                            lock(&dropped).get_or_insert_with(crate::store::now_ms);
                        }
                    }
                }
            });
        }
        Ok(Arc::new(Cluster {
            node,
            out,
            out_bytes,
            tracks: Mutex::default(),
            peers: Mutex::default(),
            connected,
            dropped_since,
            client,
            link_events: Mutex::new(Some(events_rx)),
        }))
    }

    /// Whether the NATS link is up now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Bytes waiting to go out to NATS.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes.load(Ordering::Relaxed)
    }

    fn send(&self, subject: &'static str, wire: &Wire) {
        let payload = match serde_json::to_vec(wire) {
            Ok(p) => Bytes::from(p),
            Err(e) => return tracing::error!(%e, "cannot encode a cluster message"),
        };
        let len = payload.len();
        if self.out_bytes.fetch_add(len, Ordering::Relaxed) + len > OUTBOX_BYTES
            || self.out.try_send((subject, payload)).is_err()
        {
            self.out_bytes.fetch_sub(len, Ordering::Relaxed);
            metrics::counter!("confab_fanout_dropped_total").increment(1);
            if matches!(wire, Wire::Event { .. }) {
                lock(&self.dropped_since).get_or_insert_with(crate::store::now_ms);
            }
        }
    }

    /// Rings the other nodes' doorbell for a committed event.
    pub fn announce(&self, event: &ConvEvent, recipients: &[UserId]) {
        let wire = Wire::Event { node: self.node, recipients: recipients.to_vec(), event: event.clone() };
        self.send(SUBJECT_EVENTS, &wire);
    }

    /// Sends a frame to these users' connections on the other nodes.
    pub fn forward(&self, users: &[UserId], frame: &str) {
        if users.is_empty() {
            return;
        }
        let wire = Wire::Frame { node: self.node, users: users.to_vec(), frame: frame.to_owned() };
        self.send(SUBJECT_EPHEMERAL, &wire);
    }

    /// Closes a revoked session's connections on the other nodes.
    pub fn kick_session(&self, session: Uuid) {
        self.send(SUBJECT_EPHEMERAL, &Wire::Kick { node: self.node, session });
    }

    /// Tells the others this node's connections are going (shutdown), and
    /// waits a moment for it to reach NATS.
    pub async fn leave(&self) {
        self.send(SUBJECT_EPHEMERAL, &Wire::Leave { node: self.node });
        for _ in 0..20 {
            if self.out.capacity() == self.out.max_capacity() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The publisher may hold it between the queue and the client.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.client.flush()).await;
    }

    /// Tells the others how many connections `user` has here now.
    pub fn connections_changed(&self, user: UserId, here: usize) {
        self.send(SUBJECT_EPHEMERAL, &Wire::Presence { node: self.node, users: vec![(user, here)] });
    }

    /// Connections `user` has on other nodes, as far as this node knows.
    pub fn remote_connections(&self, user: UserId) -> usize {
        let now = Instant::now();
        lock(&self.peers)
            .values()
            .filter_map(|p| p.users.get(&user))
            .filter(|(_, heard)| now.duration_since(*heard) < PEER_TTL)
            .map(|(n, _)| *n)
            .sum()
    }

    /// Those of `users` who are connected to another node.
    pub fn remote_online_among(&self, users: &[UserId]) -> Vec<UserId> {
        let now = Instant::now();
        let peers = lock(&self.peers);
        users
            .iter()
            .copied()
            .filter(|u| {
                peers.values().any(|p| p.users.get(u).is_some_and(|(n, h)| *n > 0 && now.duration_since(*h) < PEER_TTL))
            })
            .collect()
    }

    /// Delivers `event` to this node's sockets in its conversation's
    /// order: now if it is next, later if it came early, never twice.
    pub fn deliver(&self, node: &dyn Node, event: ConvEvent, recipients: Vec<UserId>) {
        let mut tracks = lock(&self.tracks);
        let now = Instant::now();
        let track = tracks.entry(event.conversation).or_insert_with(|| Track {
            next: event.pos,
            pending: BTreeMap::new(),
            gap_since: None,
            touched: now,
        });
        track.touched = now;
        if event.pos < track.next {
            return;
        }
        track.pending.insert(event.pos, (event, recipients));
        if track.pending.len() > MAX_PENDING {
            tracing::warn!(conversation = %event_conversation(&track.pending), "a gap stayed open too long; skipping it");
            track.next = track.pending.keys().next().copied().unwrap_or(track.next);
        }
        while let Some((event, recipients)) = track.pending.remove(&track.next) {
            track.next += 1;
            match frame(&ServerFrame::Event { event }) {
                Ok(f) => node.hub().publish(&recipients, f),
                Err(e) => tracing::error!(%e, "cannot encode an event"),
            }
        }
        track.gap_since = if track.pending.is_empty() { None } else { Some(track.gap_since.unwrap_or(now)) };
    }

    /// Reads from the log what NATS did not bring within [`GAP_WAIT`].
    async fn fill_gaps(&self, node: &dyn Node) {
        let due: Vec<(ConversationId, i64, i64)> = {
            let now = Instant::now();
            let mut tracks = lock(&self.tracks);
            tracks.retain(|_, t| !t.pending.is_empty() || now.duration_since(t.touched) < TRACK_IDLE);
            tracks
                .iter()
                .filter(|(_, t)| t.gap_since.is_some_and(|s| now.duration_since(s) >= GAP_WAIT))
                .filter_map(|(c, t)| t.pending.keys().next().map(|first| (*c, t.next, *first)))
                .collect()
        };
        for (conversation, next, first) in due {
            metrics::counter!("confab_gap_fills_total").increment(1);
            let limit = (first - next).clamp(1, 500) as u32;
            match node.store().events_after(conversation, next - 1, limit, FILL_BUDGET).await {
                Ok(page) => self.deliver_from_log(node, page.events).await,
                Err(e) => tracing::warn!(%e, %conversation, "cannot fill a gap from the log"),
            }
        }
    }

    /// Delivers events read from the log; their recipients are the
    /// conversation's members now (and a removed member).
    async fn deliver_from_log(&self, node: &dyn Node, events: Vec<ConvEvent>) {
        let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
        for event in events {
            let mut recipients = match members.entry(event.conversation) {
                std::collections::hash_map::Entry::Occupied(m) => m.get().clone(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    match node.store().member_ids(event.conversation).await {
                        Ok(m) => slot.insert(m).clone(),
                        Err(e) => return tracing::warn!(%e, "cannot read members"),
                    }
                }
            };
            if let EventBody::MemberRemoved { user } = &event.body {
                if !recipients.contains(user) {
                    recipients.push(*user);
                }
            }
            self.deliver(node, event, recipients);
        }
    }

    /// Delivers every event committed since `since` to this node's
    /// sockets. Those already delivered are skipped: by its track, in a
    /// conversation that has one; one without a track had nothing
    /// delivered here lately, so it gets what was committed from `fresh`
    /// (the loss), not the margin before it.
    pub async fn sweep(&self, node: &dyn Node, since: Millis, fresh: Millis) {
        tracing::info!(since, "reading the log for events the bus may have lost");
        let mut after = None;
        loop {
            let page = match node.store().events_since(since, after, SWEEP_PAGE).await {
                Ok(page) => page,
                Err(e) => return tracing::warn!(%e, "cannot sweep the log"),
            };
            let Some(last) = page.last() else { return };
            after = Some((last.ts, last.conversation, last.pos));
            let full = page.len() as u32 == SWEEP_PAGE;
            // Only conversations someone here is in; each in `pos` order.
            let mut by_conv: BTreeMap<ConversationId, Vec<ConvEvent>> = BTreeMap::new();
            for e in page {
                by_conv.entry(e.conversation).or_default().push(e);
            }
            for (conversation, mut events) in by_conv {
                let members = match node.store().member_ids(conversation).await {
                    Ok(m) => m,
                    Err(e) => return tracing::warn!(%e, "cannot read members"),
                };
                let removed: Vec<UserId> = events
                    .iter()
                    .filter_map(|e| match &e.body {
                        EventBody::MemberRemoved { user } => Some(*user),
                        _ => None,
                    })
                    .collect();
                let here = node.hub().online_among(&members);
                if here.is_empty() && node.hub().online_among(&removed).is_empty() {
                    continue;
                }
                events.sort_by_key(|e| e.pos);
                if !lock(&self.tracks).contains_key(&conversation) {
                    events.retain(|e| e.ts >= fresh);
                }
                self.deliver_from_log(node, events).await;
            }
            if !full {
                return;
            }
        }
    }

    fn handle(&self, node: &dyn Node, wire: Wire) {
        match wire {
            Wire::Event { node, .. }
            | Wire::Frame { node, .. }
            | Wire::Kick { node, .. }
            | Wire::Presence { node, .. }
            | Wire::Resync { node, .. }
            | Wire::Hello { node }
            | Wire::Leave { node }
                if node == self.node => {}
            Wire::Hello { .. } => self.heartbeat(node),
            Wire::Leave { node } => drop(lock(&self.peers).remove(&node)),
            Wire::Event { recipients, event, .. } => {
                let interested = lock(&self.tracks).contains_key(&event.conversation)
                    || !node.hub().online_among(&recipients).is_empty();
                if interested {
                    let lag = (crate::store::now_ms() - event.ts).max(0) as f64 / 1000.0;
                    metrics::histogram!("confab_nats_lag_seconds").record(lag);
                    self.deliver(node, event, recipients);
                }
            }
            Wire::Frame { users, frame, .. } => node.hub().publish(&users, Arc::from(frame)),
            Wire::Kick { session, .. } => node.hub().kick_session(session),
            Wire::Presence { node, users } => {
                let now = Instant::now();
                let mut peers = lock(&self.peers);
                let peer = peers.entry(node).or_insert_with(|| Peer { users: HashMap::new() });
                for (user, n) in users {
                    if n == 0 {
                        peer.users.remove(&user);
                    } else {
                        peer.users.insert(user, (n, now));
                    }
                }
            }
            Wire::Resync { .. } => {} // handled by the caller (async)
        }
    }

    /// Tells the others which users are connected here (every
    /// [`HEARTBEAT`]), and forgets nodes not heard from in [`PEER_TTL`].
    fn heartbeat(&self, node: &dyn Node) {
        let here = node.hub().connection_counts();
        for chunk in here.chunks(PRESENCE_CHUNK) {
            self.send(SUBJECT_EPHEMERAL, &Wire::Presence { node: self.node, users: chunk.to_vec() });
        }
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        for peer in peers.values_mut() {
            peer.users.retain(|_, (_, heard)| now.duration_since(*heard) < PEER_TTL);
        }
        peers.retain(|_, p| !p.users.is_empty());
    }
}

/// A read of the log that is due: from `since`, fresh from `fresh`.
#[derive(Clone, Copy)]
struct Sweep {
    since: Millis,
    fresh: Millis,
}

impl Sweep {
    fn merge(a: Option<Sweep>, b: Sweep) -> Sweep {
        match a {
            Some(a) => Sweep { since: a.since.min(b.since), fresh: a.fresh.min(b.fresh) },
            None => b,
        }
    }
}

/// Runs this node's side of the cluster: the subscription, gap filling,
/// heartbeats, session checks and recovery after a lost link. Returns when
/// the service shuts down.
pub async fn run(node: Arc<dyn Node>) {
    use futures_util::StreamExt;
    let Some(cluster) = node.cluster().cloned() else { return };
    let Some(mut link) = lock(&cluster.link_events).take() else { return };
    let mut sub = loop {
        match cluster.client.subscribe(SUBJECT_ALL).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(%e, "cannot subscribe to NATS; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    cluster.send(SUBJECT_EPHEMERAL, &Wire::Hello { node: cluster.node });
    let mut gaps = tokio::time::interval(GAP_WAIT / 2);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut sessions = tokio::time::interval(SESSION_CHECK);
    // When the link last went down; a node that starts without NATS has
    // missed everything from its start.
    let mut lost_since: Option<Millis> = (!cluster.is_connected()).then(crate::store::now_ms);
    // Sweeps run one at a time, off this loop (which must keep reading
    // NATS); what comes due meanwhile is merged into the next.
    let mut due: Option<Sweep> = None;
    let sweeping = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                match serde_json::from_slice::<Wire>(&msg.payload) {
                    Ok(Wire::Resync { node, since }) if node != cluster.node => {
                        due = Some(Sweep::merge(due, Sweep { since, fresh: since + SWEEP_MARGIN_MS }));
                    }
                    Ok(wire) => cluster.handle(&*node, wire),
                    Err(e) => tracing::warn!(%e, "an unreadable cluster message"),
                }
            }
            event = link.recv() => {
                let Some(event) = event else { break };
                metrics::gauge!("confab_nats_connected").set(if cluster.is_connected() { 1.0 } else { 0.0 });
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS link lost; clients here are served from the log until it returns");
                        lost_since.get_or_insert_with(crate::store::now_ms);
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        let since = crate::store::now_ms() - SWEEP_MARGIN_MS;
                        due = Some(Sweep::merge(due, Sweep { since, fresh: since }));
                    }
                    async_nats::Event::Connected => {
                        tracing::info!("NATS link up");
                        if let Some(lost) = lost_since.take() {
                            let since = lost - SWEEP_MARGIN_MS;
                            // What others wrote meanwhile, and what they
                            // may have missed of ours.
                            cluster.send(SUBJECT_EPHEMERAL, &Wire::Resync { node: cluster.node, since });
                            due = Some(Sweep::merge(due, Sweep { since, fresh: lost }));
                        }
                        cluster.heartbeat(&*node);
                    }
                    _ => {}
                }
            }
            _ = gaps.tick() => {
                cluster.fill_gaps(&*node).await;
                let dropped = lock(&cluster.dropped_since).take();
                if let Some(since) = dropped {
                    cluster.send(SUBJECT_EPHEMERAL, &Wire::Resync { node: cluster.node, since: since - SWEEP_MARGIN_MS });
                }
                if due.is_some() && !sweeping.swap(true, Ordering::AcqRel) {
                    if let Some(sweep) = due.take() {
                        start_sweep(node.clone(), sweep, sweeping.clone());
                    }
                }
            }
            _ = beat.tick() => cluster.heartbeat(&*node),
            _ = sessions.tick() => check_sessions(&*node).await,
        }
    }
}

/// Sweeps in a task of its own; a loss too long ago to read back closes
/// this node's sockets, and each client resumes from its own position.
fn start_sweep(node: Arc<dyn Node>, sweep: Sweep, sweeping: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if let Some(cluster) = node.cluster().cloned() {
            if crate::store::now_ms() - sweep.since > MAX_SWEEP_MS {
                tracing::warn!("the bus lost too much to read back; clients here reconnect and resume");
                node.hub().kick_all_with(crate::hub::Kick { code: crate::hub::CLOSE_GOING_AWAY, reason: "resync" });
            } else {
                cluster.sweep(&*node, sweep.since, sweep.fresh).await;
            }
        }
        sweeping.store(false, Ordering::Release);
    });
}

/// Closes the sockets of sessions that no longer exist: revoked or
/// signed out on another node, whose kick NATS may have lost.
async fn check_sessions(node: &dyn Node) {
    let here = node.hub().sessions();
    if here.is_empty() {
        return;
    }
    match node.store().existing_sessions(&here).await {
        Ok(existing) => {
            let existing: std::collections::HashSet<Uuid> = existing.into_iter().collect();
            for gone in here.into_iter().filter(|s| !existing.contains(s)) {
                node.hub().kick_session(gone);
            }
        }
        Err(e) => tracing::warn!(%e, "cannot check sessions"),
    }
}
