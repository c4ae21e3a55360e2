//! One WebSocket connection: `hello` authentication, then a request loop.
//!
//! Two tasks per socket: this reader, which handles requests in order (so a
//! connection's requests are answered in the order sent; consecutive sends
//! to one conversation that already wait in the socket are committed
//! together, see [`read_ahead_sends`]), and a writer that
//! drains the connection's bounded queue (replies and fan-out alike), sends
//! heartbeats and closes the socket when kicked. The two live and die
//! together: when the writer ends (a write stalled past the timeout, the
//! peer vanished), the connection is unregistered and closed at once, so no
//! event is queued for a socket nobody writes. A peer that sends nothing —
//! not even a pong — for [`Limits::idle_timeout`] is treated as dead.
//!
//! Bad input never closes the socket, except a frame beyond the transport
//! limit (close 1009) or an unauthenticated socket (close 4001).

use crate::error::ApiError;
use crate::hub::{Kick, CLOSE_SESSION_REVOKED};
use crate::hub::{Meter, Queue, CLOSE_SLOW_CONSUMER, SLOW};
use crate::service::Caller;
use crate::{auth, AppState};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use confab_protocol::{
    decode_request, ErrorCode, OutgoingText, Reply, Request, RequestBody, ServerFrame, MAX_BATCH,
    MAX_SERVER_FRAME_BYTES, PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A frame the server could not write (larger than
/// [`MAX_SERVER_FRAME_BYTES`]: a server bug) closes the socket with this
/// code rather than vanish; the client reconnects and resumes.
const CLOSE_INTERNAL: u16 = 1011;
use tokio::time::timeout;

/// Transport limit: beyond this a frame cannot even be read and the socket is
/// closed with 1009. Between [`confab_protocol::MAX_FRAME_BYTES`] and this,
/// the client gets a `frame_too_large` error and stays connected.
const TRANSPORT_MAX_MESSAGE: usize = 256 * 1024;
/// Per-socket buffers: chat frames are small, and 10k idle sockets at the
/// default 128 KiB each would be over a gigabyte. The read buffer is
/// allocated up front and grows only while a larger frame is read, so
/// 1 KiB holds a typical request and
/// costs an idle connection little: 8 KiB made it ~17.7 KiB of server
/// RSS per connection (1,000 connecting), 1 KiB ~9 KiB (`scripts/bench-load`).
const SOCKET_BUFFER: usize = 1024;
/// Bytes the writer gathers before a write to the socket: the buffer grows
/// only as frames need it, so an idle connection does not pay for it, and
/// a burst goes out in few syscalls.
const WRITE_BUFFER: usize = 8 * 1024;
/// Frames written together before one flush, at most about this many bytes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4029;

pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // Shutting down: the client's next attempt goes to another node.
        return axum::response::IntoResponse::into_response(ApiError::from(ErrorCode::Unavailable));
    }
    ws.read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Above the largest frame the server sends, so a legal frame is
        // never refused by the transport (the buffer only grows as needed).
        .max_write_buffer_size(MAX_SERVER_FRAME_BYTES + WRITE_BUFFER * 2)
        .max_message_size(TRANSPORT_MAX_MESSAGE)
        .max_frame_size(TRANSPORT_MAX_MESSAGE)
        .on_upgrade(move |socket| connection(socket, state))
}

fn encode(frame: &ServerFrame) -> Arc<str> {
    // Serializing our own types cannot fail; fall back to a fixed error frame
    // rather than panic if it ever does.
    serde_json::to_string(frame).map(Arc::from).unwrap_or_else(|_| {
        Arc::from(r#"{"type":"error","id":null,"code":"internal","message":"encoding failed","retry_after_ms":null}"#)
    })
}

fn error_frame(id: Option<u64>, code: ErrorCode, message: String, retry_after_ms: Option<u64>) -> Arc<str> {
    encode(&ServerFrame::Error { id, code, message, retry_after_ms })
}

fn is_too_big(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) = e.downcast_ref() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

async fn connection(socket: WebSocket, state: AppState) {
    let (mut sink, mut stream) = socket.split();
    let limits = state.limits.clone();
    let Some((caller, session, hello_id, token)) = authenticate(&mut sink, &mut stream, &state).await else {
        return;
    };
    let service = state.service.clone();
    let welcome = ServerFrame::Result {
        id: hello_id,
        result: Reply::Welcome {
            user: caller.user,
            username: caller.username.clone(),
            server_time: crate::store::now_ms(),
            epoch: service.epoch.clone(),
        },
    };
    let elsewhere = service.cluster.as_ref().map_or(0, |c| c.remote_connections(caller.user));
    let Some(reg) = service.hub.register_beside(caller.user, session, encode(&welcome), elsewhere) else {
        let msg = format!("at most {} connections per account", limits.max_connections_per_user);
        let f = error_frame(Some(hello_id), ErrorCode::TooManyConnections, msg, None);
        let _ = sink.send(Message::Text(f.as_ref().into())).await;
        close(&mut sink, CLOSE_TOO_MANY_CONNECTIONS, "too_many_connections").await;
        return;
    };
    let caller = Caller { conn: reg.id, ..caller };
    service.push.connected(session);
    tracing::debug!(user = %caller.user, conn = reg.id, "connected");
    // When the writer ends — kicked, or a write stalled or failed — it
    // tells the reader through the kick signal, which the reader checks
    // only between requests: a request in progress still commits *and*
    // publishes before the connection goes.
    let writer = {
        let (rx, meter, kicked, kick) = (reg.rx, reg.queue.meter(), reg.kicked.clone(), reg.kick.clone());
        let (ping, write_timeout) = (limits.ping_interval, limits.write_timeout);
        tokio::spawn(async move {
            write_loop(sink, rx, meter, kicked, ping, write_timeout).await;
            if kick.borrow().is_none() {
                kick.send_replace(Some(Kick { code: CLOSE_SLOW_CONSUMER, reason: "write_failed" }));
            }
        })
    };
    // A logout that raced this hello (after the token check, before the
    // registration) must still end this socket.
    if !matches!(service.store.session(&auth::token_hash(&token)).await, Ok(Some(_))) {
        reg.kick.send_replace(Some(Kick { code: CLOSE_SESSION_REVOKED, reason: "session_revoked" }));
    }
    if let Some(cluster) = &service.cluster {
        cluster.connections_changed(caller.user, service.hub.connections(caller.user));
    }
    metrics::gauge!("confab_connections").increment(1.0);
    if reg.first && elsewhere == 0 {
        if let Err(e) = service.announce_presence(caller.user, true, None).await {
            tracing::warn!(%e, "presence announce failed");
        }
    }
    // Who is online among this user's contacts (anyone not listed is not).
    match service.presence_snapshot(caller.user).await {
        Ok(frames) => {
            for f in frames {
                if !reg.queue.offer(f) {
                    reg.kick.send_replace(Some(SLOW));
                }
            }
        }
        Err(e) => tracing::warn!(%e, "presence snapshot failed"),
    }
    // A device that connects while a call rings for it (a phone woken by
    // a push, a laptop opened) rings too.
    for f in service.calls_ringing_for(caller.user) {
        if !reg.queue.offer(f) {
            reg.kick.send_replace(Some(SLOW));
        }
    }
    read_loop(&mut stream, &state, &caller, &reg.queue, reg.kicked, &reg.kick).await;
    // Dropping our sender (the hub's goes with unregister) ends the writer
    // once it has flushed what is queued. If the writer ended first, the
    // socket goes with the stream half dropped here: the peer sees the
    // connection close and resumes.
    let last = service.hub.unregister(caller.user, reg.id);
    metrics::gauge!("confab_connections").decrement(1.0);
    if let Some(cluster) = &service.cluster {
        cluster.connections_changed(caller.user, service.hub.connections(caller.user));
    }
    drop(reg.queue);
    let _ = writer.await;
    service.connection_gone(caller.user, reg.id).await;
    // In use until now: a device connected for months does not expire.
    if let Err(e) = service.store.touch_session(caller.session, crate::store::now_ms()).await {
        tracing::warn!(%e, "cannot record the session's use");
    }
    // Re-check: another device may have connected while this one wound down.
    if last && !service.is_online(caller.user) {
        let now = crate::store::now_ms();
        if let Err(e) = service.store.set_last_seen(caller.user, now).await {
            tracing::warn!(%e, "last_seen update failed");
        }
        if let Err(e) = service.announce_presence(caller.user, false, Some(now)).await {
            tracing::warn!(%e, "presence announce failed");
        }
    }
    tracing::debug!(user = %caller.user, "disconnected");
}

/// Waits for `hello` and checks its token. On failure replies with an error,
/// closes, and returns `None`.
async fn authenticate(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
) -> Option<(Caller, uuid::Uuid, u64, String)> {
    let next_data = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    };
    let first = match timeout(state.limits.hello_timeout, next_data).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(_))) => {
            let f = error_frame(None, ErrorCode::Unauthenticated, "the first frame must be `hello`".into(), None);
            let _ = sink.send(Message::Text(f.as_ref().into())).await;
            close(sink, CLOSE_SESSION_REVOKED, "unauthenticated").await;
            return None;
        }
        Ok(Some(Err(e))) if is_too_big(&e) => {
            close(sink, CLOSE_TOO_BIG, "frame_too_large").await;
            return None;
        }
        _ => {
            close(sink, CLOSE_SESSION_REVOKED, "unauthenticated").await;
            return None;
        }
    };
    let reject = |id, code: ErrorCode, message: String| error_frame(id, code, message, None);
    let frame = match decode_request(&first) {
        Ok(Request { id, body: RequestBody::Hello { token, protocol } }) => {
            if protocol != PROTOCOL_VERSION {
                let m = format!("server speaks protocol {PROTOCOL_VERSION}, client {protocol}");
                Err(reject(Some(id), ErrorCode::UnsupportedProtocol, m))
            } else {
                let store = &state.service.store;
                let now = crate::store::now_ms();
                let ttl = state.limits.session_ttl.as_millis() as i64;
                match store.session(&auth::token_hash(&token)).await {
                    // Unused for too long: expired, as if revoked.
                    Ok(Some(s)) if s.last_seen < now - ttl => {
                        let _ = store.revoke_sessions(s.user, crate::store::Revoke::One(s.id)).await;
                        Err(reject(Some(id), ErrorCode::InvalidToken, ErrorCode::InvalidToken.describe().into()))
                    }
                    Ok(Some(s)) => {
                        if let Err(e) = store.touch_session(s.id, now).await {
                            tracing::warn!(%e, "cannot record the session's use");
                        }
                        Ok((id, s, token))
                    }
                    Ok(None) => {
                        Err(reject(Some(id), ErrorCode::InvalidToken, ErrorCode::InvalidToken.describe().into()))
                    }
                    Err(e) => Err(reject(Some(id), e.code, e.message)),
                }
            }
        }
        Ok(req) => Err(reject(Some(req.id), ErrorCode::Unauthenticated, "the first frame must be `hello`".into())),
        Err(e) => Err(reject(e.id, e.code, e.message)),
    };
    match frame {
        Ok((id, session, token)) => Some((
            Caller { user: session.user, username: session.username, session: session.id, conn: 0 },
            session.id,
            id,
            token,
        )),
        Err(f) => {
            let _ = sink.send(Message::Text(f.as_ref().into())).await;
            close(sink, CLOSE_SESSION_REVOKED, "unauthenticated").await;
            None
        }
    }
}

async fn read_loop(
    stream: &mut SplitStream<WebSocket>,
    state: &AppState,
    caller: &Caller,
    queue: &Queue,
    mut kicked: watch::Receiver<Option<Kick>>,
    kick: &watch::Sender<Option<Kick>>,
) {
    let slow = || {
        kick.send_replace(Some(SLOW));
    };
    let idle = state.limits.idle_timeout;
    // A frame read past the end of a batch of sends, handled next.
    let mut ahead = None;
    loop {
        let next = match ahead.take() {
            Some(frame) => Ok(frame),
            None => tokio::select! {
                next = timeout(idle, stream.next()) => next,
                _ = kicked.changed() => return,
            },
        };
        let text = match next {
            Err(_) => {
                tracing::debug!(user = %caller.user, "no traffic within the idle timeout: dropping a dead link");
                return;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Err(e))) => {
                if is_too_big(&e) {
                    kick.send_replace(Some(Kick { code: CLOSE_TOO_BIG, reason: "frame_too_large" }));
                }
                return;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let f = error_frame(
                    None,
                    ErrorCode::MalformedJson,
                    "binary frames are not supported; send JSON text".into(),
                    None,
                );
                if !queue.reply(f).await {
                    slow();
                    return;
                }
                continue;
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
        };
        let replies = match decode_request(text.as_str()) {
            Ok(Request { id, body: RequestBody::Send { conversation, client_id, text, attachments } }) => {
                let mut batch = vec![(id, OutgoingText { client_id, text, attachments })];
                ahead = read_ahead_sends(stream, conversation, &mut batch);
                handle_sends(state, caller, conversation, batch).await
            }
            Ok(req) => vec![handle_request(state, caller, req).await],
            Err(e) => vec![error_frame(e.id, e.code, e.message, None)],
        };
        for reply in replies {
            if !queue.reply(reply).await {
                // Replies pile up unread beyond the byte budget.
                slow();
                return;
            }
        }
    }
}

/// Takes the sends to `conversation` that already wait in the socket right
/// after the first (a client that pipelines them, or one whose sends
/// queued while the last commit ran), up to [`MAX_BATCH`]: they become one
/// store call and one commit, and are answered one by one, in order. The
/// first frame that is anything else is returned, to be handled next.
fn read_ahead_sends(
    stream: &mut SplitStream<WebSocket>,
    conversation: confab_protocol::ConversationId,
    batch: &mut Vec<(u64, OutgoingText)>,
) -> Option<Option<Result<Message, axum::Error>>> {
    use futures_util::FutureExt;
    while batch.len() < MAX_BATCH {
        let next = stream.next().now_or_never()?;
        let Some(Ok(Message::Text(t))) = &next else {
            if matches!(next, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
                continue;
            }
            return Some(next);
        };
        match decode_request(t.as_str()) {
            Ok(Request { id, body: RequestBody::Send { conversation: c, client_id, text, attachments } })
                if c == conversation =>
            {
                batch.push((id, OutgoingText { client_id, text, attachments }));
            }
            _ => return Some(next),
        }
    }
    None
}

/// Replies to a batch of `send`s, in order: each checked against the rate
/// limit like any request, the rest committed together.
async fn handle_sends(
    state: &AppState,
    caller: &Caller,
    conversation: confab_protocol::ConversationId,
    batch: Vec<(u64, OutgoingText)>,
) -> Vec<Arc<str>> {
    let mut replies: Vec<Option<Arc<str>>> = vec![None; batch.len()];
    let mut ids = Vec::with_capacity(batch.len());
    let mut texts = Vec::with_capacity(batch.len());
    for (i, (id, text)) in batch.into_iter().enumerate() {
        match limited(state, caller, std::num::NonZeroU32::MIN) {
            Some(e) => replies[i] = Some(error_frame(Some(id), e.code, e.message, e.retry_after_ms)),
            None => {
                ids.push((i, id));
                texts.push(text);
            }
        }
    }
    if !texts.is_empty() {
        match state.service.send_each(caller, conversation, texts).await {
            Ok(results) => {
                for ((i, id), result) in ids.into_iter().zip(results) {
                    replies[i] = Some(match result {
                        Ok(result) => encode(&ServerFrame::Result { id, result }),
                        Err(e) => error_frame(Some(id), e.code, e.message, e.retry_after_ms),
                    });
                }
            }
            Err(e) => {
                for (i, id) in ids {
                    replies[i] = Some(error_frame(Some(id), e.code, e.message.clone(), e.retry_after_ms));
                }
            }
        }
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| error_frame(None, ErrorCode::Internal, "no reply".into(), None)))
        .collect()
}

/// The rate limiter's word on a request of `cost`.
fn limited(state: &AppState, caller: &Caller, cost: std::num::NonZeroU32) -> Option<ApiError> {
    match state.request_limiter.check_key_n(&caller.user, cost) {
        Ok(Ok(())) => None,
        Ok(Err(wait)) => Some(crate::guard::not_until(wait)),
        // More than the burst allows at all (a tiny configured burst).
        Err(_) => Some(ApiError::rate_limited(1000)),
    }
}

async fn handle_request(state: &AppState, caller: &Caller, req: Request) -> Arc<str> {
    // A batch of receipts is up to 100 commits: it costs one request per
    // ten of them, so batching saves round trips without buying load.
    let cost = match &req.body {
        RequestBody::DeliveredMany { receipts } => receipts.len().div_ceil(10).max(1),
        // Likewise: one commit for the batch.
        RequestBody::SendMany { messages, .. } => messages.len().div_ceil(10).max(1),
        _ => 1,
    };
    let cost = std::num::NonZeroU32::new(cost as u32).unwrap_or(std::num::NonZeroU32::MIN);
    if let Some(e) = limited(state, caller, cost) {
        return error_frame(Some(req.id), e.code, e.message, e.retry_after_ms);
    }
    match state.service.handle(caller, req.body).await {
        Ok(result) => encode(&ServerFrame::Result { id: req.id, result }),
        Err(e) => error_frame(Some(req.id), e.code, e.message, e.retry_after_ms),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Arc<str>>,
    queue: Meter,
    mut kicked: watch::Receiver<Option<Kick>>,
    ping_interval: Duration,
    write_timeout: Duration,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = kicked.changed() => {
                let kick = *kicked.borrow();
                if let Some(k) = kick {
                    let _ = timeout(write_timeout, close(&mut sink, k.code, k.reason)).await;
                }
                return;
            }
            frame = rx.recv() => match frame {
                Some(first) => {
                    // Whatever else is queued goes out with it, flushed
                    // once: under load one write carries many frames
                    // instead of a syscall each.
                    let mut next = Some(first);
                    let mut bytes = 0;
                    while let Some(f) = next.take() {
                        if f.len() > MAX_SERVER_FRAME_BYTES {
                            tracing::error!(bytes = f.len(), "a frame over the server's frame limit; closing");
                            let _ = timeout(write_timeout, close(&mut sink, CLOSE_INTERNAL, "frame_too_large")).await;
                            return;
                        }
                        let fed = timeout(write_timeout, sink.feed(Message::Text(f.as_ref().into()))).await;
                        queue.sent(f.len());
                        if !matches!(fed, Ok(Ok(()))) {
                            tracing::debug!("write failed or stalled; closing the connection");
                            return;
                        }
                        bytes += f.len();
                        if bytes < WRITE_BATCH_BYTES {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !matches!(timeout(write_timeout, sink.flush()).await, Ok(Ok(()))) {
                        tracing::debug!("write failed or stalled; closing the connection");
                        return;
                    }
                }
                None => {
                    let _ = timeout(write_timeout, sink.close()).await;
                    return;
                }
            },
            _ = ping.tick() => {
                let sent = timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
