//! The link to the server: connect, authenticate, heartbeat, detect dead
//! links, reconnect with backoff and full jitter. The one home of reconnect.
//!
//! One task owns the socket. Requests reach it through a channel and get
//! their reply through a oneshot, matched by request id; server events go,
//! in arrival order, to the sync task's channel, each connection's events
//! preceded by [`Inbound::Connected`] so the sync task knows to resume.
//!
//! While disconnected, requests fail at once with [`Error::Disconnected`]
//! (callers that must not lose anything, like the outbox, persist first and
//! retry).

use crate::backoff::Backoff;
use crate::call::manager::CallFrame;
use crate::types::ConnectionState;
use crate::{Error, Result};
use confab_protocol::{
    decode_server_frame, ConvEvent, ConversationId, ErrorCode, Millis, Reply, Request, RequestBody, ServerFrame,
    UserId, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Timings of the link. The defaults suit phones and desktops alike.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    /// How often to ping the server.
    pub ping_interval: Duration,
    /// No answer to our own ping for this long means the link is dead.
    pub dead_after: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub request_timeout: Duration,
    /// TLS trust for `wss://` beyond the public roots (set by the client
    /// from [`crate::Client::with_ca_cert`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            tls: None,
        }
    }
}

/// What the connection task hands to the sync task, in order.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A new connection is authenticated; what follows belongs to it.
    Connected {
        /// The server's store epoch (see `docs/protocol.md`).
        epoch: String,
        /// See [`Link::generation`].
        generation: u64,
    },
    /// Events were dropped because the sync task fell behind: compare every
    /// conversation with the server again.
    Resync,
    Event(ConvEvent),
    Typing {
        conversation: ConversationId,
        user: UserId,
        ttl_ms: u32,
    },
    Presence {
        user: UserId,
        online: bool,
        last_seen: Option<Millis>,
    },
    PresenceList {
        presence: Vec<confab_protocol::Presence>,
        snapshot: bool,
    },
    /// Members' receipt watermarks moved (see [`ServerFrame::Receipts`]).
    Receipts {
        conversation: ConversationId,
        since: i64,
        version: i64,
        marks: Vec<confab_protocol::Watermark>,
    },
}

struct Command {
    body: RequestBody,
    /// `None`: fire and forget (the reply is logged if it is an error).
    reply: Option<oneshot::Sender<Result<Reply>>>,
}

/// A cheap handle for sending requests over the current connection.
#[derive(Clone)]
pub(crate) struct Link {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    request_timeout: Duration,
    /// Requests sent (heartbeats aside), for measuring what a sync costs.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Counts connections: a request made for one connection's sync must
    /// not go out over the next (it may be to a restored server).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Which connection this is (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        *self.state.borrow() == ConnectionState::Connected
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, body: RequestBody) -> Result<Reply> {
        if !self.is_connected() {
            return Err(Error::Disconnected);
        }
        let (tx, rx) = oneshot::channel();
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.commands.send(Command { body, reply: Some(tx) }).await.map_err(|_| Error::Disconnected)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Sends a request whose reply nobody waits for (receipts, typing).
    pub fn send_and_forget(&self, body: RequestBody) {
        if self.is_connected() {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = self.commands.try_send(Command { body, reply: None });
        }
    }

    /// Waits until connected, up to `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> Result<()> {
        let mut state = self.state.clone();
        let wait = async {
            state
                .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::SignedOut))
                .await
                .map(|s| s.clone())
        };
        let result = tokio::time::timeout(limit, wait).await;
        match result {
            Ok(Ok(ConnectionState::Connected)) => Ok(()),
            Ok(Ok(_)) => Err(Error::server(ErrorCode::InvalidToken, ErrorCode::InvalidToken.describe())),
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::Unreachable("timed out waiting for a connection".into())),
        }
    }
}

/// Turns `http(s)://host:port[/base]` into the WebSocket endpoint.
pub fn ws_url(server: &str) -> Result<String> {
    let server = server.trim_end_matches('/');
    let rest = if let Some(r) = server.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = server.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(Error::Invalid(format!("server URL must start with http:// or https://, got `{server}`")));
    };
    Ok(format!("{rest}/v1/ws"))
}

pub(crate) fn spawn(
    server: String,
    token: String,
    config: LinkConfig,
    inbound: mpsc::Sender<Inbound>,
    calls: mpsc::Sender<CallFrame>,
) -> (Link, watch::Receiver<ConnectionState>, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::channel(256);
    let (state_tx, state) = watch::channel(ConnectionState::Connecting { attempt: 0 });
    let generation: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
    let link = Link {
        commands,
        state: state.clone(),
        request_timeout: config.request_timeout,
        sent: Default::default(),
        generation: generation.clone(),
    };
    let outlets = Outlets { inbound, calls };
    let task = tokio::spawn(run(server, token, config, rx, state_tx, outlets, generation));
    (link, state, task)
}

/// Where a connection's frames go: most to the sync task, call frames to
/// the call manager, which must not wait behind a large catch-up.
struct Outlets {
    inbound: mpsc::Sender<Inbound>,
    calls: mpsc::Sender<CallFrame>,
}

enum Ended {
    /// Reconnect after a delay.
    Retry(String),
    /// The token is no longer valid: stop.
    SignedOut,
    /// Every handle was dropped: the client is shutting down.
    Shutdown,
}

async fn run(
    server: String,
    token: String,
    config: LinkConfig,
    mut commands: mpsc::Receiver<Command>,
    state: watch::Sender<ConnectionState>,
    outlets: Outlets,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    loop {
        state.send_replace(ConnectionState::Connecting { attempt: backoff.attempt() });
        let ended = match connect(&server, &token, &config).await {
            Ok((ws, epoch)) => {
                backoff.reset();
                let generation = generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                // Connected first, so the sync task's requests go through
                // when it sees the marker.
                state.send_replace(ConnectionState::Connected);
                if outlets.inbound.send(Inbound::Connected { epoch, generation }).await.is_err() {
                    return;
                }
                session(ws, &config, &mut commands, &outlets).await
            }
            Err(Error::Server { code: ErrorCode::InvalidToken, .. }) => Ended::SignedOut,
            Err(e) => Ended::Retry(e.to_string()),
        };
        let reason = match ended {
            Ended::Retry(reason) => reason,
            Ended::SignedOut => {
                state.send_replace(ConnectionState::SignedOut);
                // Answer requests until the client is dropped.
                while let Some(cmd) = commands.recv().await {
                    if let Some(reply) = cmd.reply {
                        let _ =
                            reply.send(Err(Error::server(ErrorCode::InvalidToken, ErrorCode::InvalidToken.describe())));
                    }
                }
                return;
            }
            Ended::Shutdown => return,
        };
        let delay = backoff.next_delay();
        tracing::debug!(%reason, ?delay, "disconnected; reconnecting");
        state.send_replace(ConnectionState::Offline { retry_in_ms: delay.as_millis() as u64, reason });
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => if let Some(reply) = cmd.reply { let _ = reply.send(Err(Error::Disconnected)); },
                    None => return,
                },
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and authenticates; returns the socket after `welcome`, and the
/// server's epoch.
async fn connect(server: &str, token: &str, config: &LinkConfig) -> Result<(Ws, String)> {
    let url = ws_url(server)?;
    // Small frames both ways; do not reserve 128 KiB per socket. Accept
    // anything the server may send (it never sends more than
    // MAX_SERVER_FRAME_BYTES).
    let max = 4 * confab_protocol::MAX_SERVER_FRAME_BYTES;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    // disable_nagle: small request/reply frames must not wait for ACKs.
    let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), Some(ws_config), true, connector);
    let (mut ws, _) = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| Error::Unreachable("connection timed out".into()))?
        .map_err(|e| Error::Unreachable(e.to_string()))?;
    let hello = Request { id: 0, body: RequestBody::Hello { token: token.to_owned(), protocol: PROTOCOL_VERSION } };
    let text = serde_json::to_string(&hello).map_err(|e| Error::Protocol(e.to_string()))?;
    ws.send(WsMessage::text(text)).await.map_err(|e| Error::Unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(config.connect_timeout, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(WsMessage::Text(t)) => return Ok(t),
                Ok(WsMessage::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => return Err(Error::Unreachable(e.to_string())),
            }
        }
        Err(Error::Unreachable("closed during hello".into()))
    })
    .await
    .map_err(|_| Error::Unreachable("no answer to hello".into()))??;
    match decode_server_frame(answer.as_str()) {
        Ok(ServerFrame::Result { result: Reply::Welcome { epoch, .. }, .. }) => Ok((ws, epoch)),
        Ok(ServerFrame::Error { code, message, retry_after_ms, .. }) => {
            Err(Error::Server { code, message, retry_after_ms })
        }
        Ok(other) => Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
        Err(e) => Err(Error::Protocol(e.to_string())),
    }
}

/// Runs one authenticated connection until it ends.
async fn session(ws: Ws, config: &LinkConfig, commands: &mut mpsc::Receiver<Command>, outlets: &Outlets) -> Ended {
    let inbound = &outlets.inbound;
    let (mut sink, mut stream) = ws.split();
    let mut pending: HashMap<u64, oneshot::Sender<Result<Reply>>> = HashMap::new();
    let mut next_id: u64 = 1;
    // Liveness is the answer to our own ping request: it went through the
    // server's request loop and its writer, the path every event takes.
    // Transport pongs or other traffic prove less (a server whose writer
    // died can still answer transport pings).
    let mut last_answer = Instant::now();
    let mut ping_id: Option<u64> = None;
    let mut resync = false;
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let ended = loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        break Ended::Retry(format!("server closed the connection {why}").trim().to_owned());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Ended::Retry(e.to_string()),
                    None => break Ended::Retry("connection closed".into()),
                };
                let frame = match decode_server_frame(text.as_str()) {
                    Ok(f) => f,
                    Err(e) => { tracing::warn!(%e, "skipping an undecodable frame"); continue; }
                };
                let forward = match frame {
                    ServerFrame::Result { id, .. } | ServerFrame::Error { id: Some(id), .. } if ping_id == Some(id) => {
                        ping_id = None;
                        last_answer = Instant::now();
                        None
                    }
                    ServerFrame::Result { id, result } => {
                        if let Some(tx) = pending.remove(&id) { let _ = tx.send(Ok(result)); }
                        None
                    }
                    ServerFrame::Error { id, code, message, retry_after_ms } => {
                        match id.and_then(|id| pending.remove(&id)) {
                            Some(tx) => { let _ = tx.send(Err(Error::Server { code, message, retry_after_ms })); }
                            None => tracing::debug!(?code, %message, "error for a request nobody waits for"),
                        }
                        None
                    }
                    ServerFrame::Event { event } => Some(Inbound::Event(event)),
                    ServerFrame::Typing { conversation, user, ttl_ms } => Some(Inbound::Typing { conversation, user, ttl_ms }),
                    ServerFrame::Presence { user, online, last_seen } => Some(Inbound::Presence { user, online, last_seen }),
                    ServerFrame::PresenceList { presence, snapshot } => Some(Inbound::PresenceList { presence, snapshot }),
                    ServerFrame::Receipts { conversation, since, version, marks } => {
                        Some(Inbound::Receipts { conversation, since, version, marks })
                    }
                    ServerFrame::Call { call, conversation, peer, update } => {
                        // A full queue means the call manager is stuck;
                        // losing a frame ends that call by timeout rather
                        // than blocking every other frame.
                        if outlets.calls.try_send(CallFrame { call, conversation, peer, update }).is_err() {
                            tracing::warn!(%call, "call frame dropped: the call manager is behind");
                        }
                        None
                    }
                };
                // Never wait on the sync task here: it may itself be waiting
                // for a reply only this loop can deliver. If it falls behind,
                // drop the event and ask for a resync once there is room —
                // gap filling makes dropping safe.
                if let Some(f) = forward {
                    match inbound.try_send(f) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => resync = true,
                        Err(mpsc::error::TrySendError::Closed(_)) => break Ended::Shutdown,
                    }
                }
                if resync && inbound.try_send(Inbound::Resync).is_ok() {
                    resync = false;
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break Ended::Shutdown };
                let id = next_id;
                next_id += 1;
                let text = match serde_json::to_string(&Request { id, body: cmd.body }) {
                    Ok(t) => t,
                    Err(e) => {
                        if let Some(r) = cmd.reply { let _ = r.send(Err(Error::Protocol(e.to_string()))); }
                        continue;
                    }
                };
                if let Some(reply) = cmd.reply { pending.insert(id, reply); }
                if let Err(e) = sink.send(WsMessage::text(text)).await {
                    break Ended::Retry(e.to_string());
                }
            }
            _ = ping.tick() => {
                if resync && inbound.try_send(Inbound::Resync).is_ok() {
                    resync = false;
                }
                if last_answer.elapsed() > config.dead_after {
                    break Ended::Retry(format!("no answer from the server for {}s", config.dead_after.as_secs()));
                }
                if ping_id.is_none() {
                    let id = next_id;
                    next_id += 1;
                    let text = serde_json::to_string(&Request { id, body: RequestBody::Ping {} }).unwrap_or_default();
                    if let Err(e) = sink.send(WsMessage::text(text)).await {
                        break Ended::Retry(e.to_string());
                    }
                    ping_id = Some(id);
                }
            }
        }
    };
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(Error::Disconnected));
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls() {
        assert_eq!(ws_url("http://127.0.0.1:7313").unwrap(), "ws://127.0.0.1:7313/v1/ws");
        assert_eq!(ws_url("https://chat.example/").unwrap(), "wss://chat.example/v1/ws");
        assert!(ws_url("ftp://x").is_err());
    }
}
