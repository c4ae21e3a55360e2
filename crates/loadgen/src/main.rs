//! `confab-loadgen`: the load generator of the benchmark
//! (`scripts/bench-load`). It opens N WebSocket connections to a server,
//! puts them in groups (one sender per group), sends at a fixed total rate
//! for a while, and measures, at every receiver, the time from send to
//! delivery. It speaks two protocols: Confab's and socket.io's (engine.io
//! v4 over a WebSocket), so the same generator drives `confab-server` and
//! the socket.io + Postgres reference in one run.
//!
//! Each message's text is its send time (microseconds since the generator
//! started), so a receiver needs no lookup to know its latency. Sending is
//! open-loop: the schedule does not wait for the server, so a server that
//! falls behind shows it as latency and undelivered messages.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Confab,
    Socketio,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// The server's base URL (http://host:port); for confab, several
    /// nodes of one deployment, comma-separated: connection i goes to
    /// node i mod n, so each group spans the nodes.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Connections per group; the first of each sends.
    #[arg(long, default_value_t = 10)]
    group: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// How long to wait, after the last send, for messages still on the way.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// The server's process, to report its memory per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Receivers drop their connection for --churn-down-ms every
    /// --churn-every seconds (each at its own phase) and come back:
    /// Confab's resume from the last position they applied, socket.io's
    /// join their room again.
    #[arg(long)]
    churn: bool,
    #[arg(long, default_value_t = 10)]
    churn_every: u64,
    #[arg(long, default_value_t = 1000)]
    churn_down_ms: u64,
    /// Confab accounts kept between runs ("name token" per line):
    /// registering thousands costs minutes of password hashing.
    #[arg(long)]
    accounts: Option<std::path::PathBuf>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    send_errors: AtomicU64,
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// Send → the server's acknowledgement (persisted), per message: the
    /// first stage of send → deliver.
    acks_us: Mutex<Vec<u32>>,
    /// When the first message was sent and the last one arrived.
    first_send_us: AtomicU64,
    last_arrival_us: AtomicU64,
    reconnects: AtomicU64,
}

impl Stats {
    fn arrived(&self, text: &str) {
        if let Some(sent) = text.strip_prefix('t').and_then(|t| t.parse::<u64>().ok()) {
            let now = now_us();
            let latency = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.last_arrival_us.fetch_max(now, Ordering::Relaxed);
            self.latencies_us.lock().unwrap_or_else(|e| e.into_inner()).push(latency);
        }
    }

    /// The acknowledgement of the send with request id `id`.
    fn acked(&self, id: u64) {
        if let Some(sent) = id.checked_sub(SEND_IDS) {
            let latency = now_us().saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            self.acks_us.lock().unwrap_or_else(|e| e.into_inner()).push(latency);
        }
    }
}

/// A send's request (or socket.io ack) id is this plus its send time in
/// microseconds, so its acknowledgement tells its latency without a
/// lookup; setup and resume requests use small ids.
const SEND_IDS: u64 = 1 << 40;

/// The positions a Confab receiver has seen: each message counts once,
/// live or replayed, and a resume starts after the contiguous run.
#[derive(Default)]
struct Seen {
    contiguous: i64,
    above: std::collections::BTreeSet<i64>,
}

impl Seen {
    /// True the first time `pos` is seen.
    fn insert(&mut self, pos: i64) -> bool {
        if pos <= self.contiguous || !self.above.insert(pos) {
            return false;
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }
}

/// One connection: frames to send go through `tx`; its reader runs once
/// the setup is done.
struct Peer {
    tx: mpsc::UnboundedSender<Message>,
    reader: Option<Parked>,
    /// The user id (Confab) or name (socket.io) its own messages carry.
    me: String,
    name: String,
    /// Confab's session token, to come back after a drop.
    token: String,
}

/// A socket whose reader does not run yet, kept read meanwhile (and
/// socket.io's pings answered): setting up thousands of connections takes
/// longer than a server waits before it drops one that never answers.
struct Parked {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<SplitStream<Ws>>,
}

fn park(mut stream: SplitStream<Ws>, tx: mpsc::UnboundedSender<Message>) -> Parked {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return stream,
                f = stream.next() => match f {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => drop(tx.send(Message::text("3"))),
                    Some(Ok(_)) => {}
                    // Closed: its reader will find out.
                    Some(Err(_)) | None => return stream,
                },
            }
        }
    });
    Parked { stop, task }
}

impl Parked {
    async fn resume(self) -> anyhow::Result<SplitStream<Ws>> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }
}

async fn open(url: &str) -> anyhow::Result<(mpsc::UnboundedSender<Message>, SplitStream<Ws>)> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("connect {url}"))?;
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    Ok((tx, stream))
}

async fn next_text(stream: &mut SplitStream<Ws>) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("socket: {e}"),
            Ok(None) => bail!("socket closed"),
            Err(_) => bail!("no frame in 30 s"),
        }
    }
}

/// Reads Confab frames until the reply to request `id`.
async fn confab_reply(stream: &mut SplitStream<Ws>, id: u64) -> anyhow::Result<Value> {
    loop {
        let f: Value = serde_json::from_str(&next_text(stream).await?)?;
        if f["id"] == id {
            if f["type"] == "result" {
                return Ok(f["result"].clone());
            }
            bail!("request {id} failed: {f}");
        }
    }
}

async fn register(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<String> {
    for _ in 0..200 {
        let r = http
            .post(format!("{url}/v1/register"))
            .json(&json!({"username": name, "password": "loadgen-password"}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return body["token"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no token: {body}"));
        }
        // The password hashers' queue is full: wait as told.
        let wait = body["retry_after_ms"].as_u64().unwrap_or(200);
        tokio::time::sleep(Duration::from_millis(wait.clamp(20, 2000))).await;
    }
    bail!("could not register {name}")
}

/// Opens a Confab connection and authenticates it; returns the user id.
async fn confab_connect(
    ws_url: &str,
    token: &str,
) -> anyhow::Result<(mpsc::UnboundedSender<Message>, SplitStream<Ws>, String)> {
    let (tx, mut stream) = open(ws_url).await?;
    tx.send(Message::text(json!({"id": 0, "type": "hello", "token": token, "protocol": 1}).to_string()))?;
    let welcome = confab_reply(&mut stream, 0).await?;
    let me = welcome["user"].as_str().ok_or_else(|| anyhow!("no user id"))?.to_owned();
    Ok((tx, stream, me))
}

/// `n` accounts: those kept in `file` from earlier runs, and new ones.
async fn accounts(url: &str, n: usize, file: Option<&std::path::Path>) -> anyhow::Result<Vec<(String, String)>> {
    let mut kept: Vec<(String, String)> = match file.and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(text) => {
            text.lines().filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned()))).collect()
        }
        None => Vec::new(),
    };
    if kept.len() >= n {
        kept.truncate(n);
        return Ok(kept);
    }
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..28];
    let names: Vec<String> = (kept.len()..n).map(|i| format!("lg{run}x{i}")).collect();
    let http = reqwest::Client::new();
    let tokens: Vec<String> = futures_util::stream::iter(names.iter())
        .map(|n| register(&http, url, n))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    kept.extend(names.into_iter().zip(tokens));
    if let Some(f) = file {
        let text: String = kept.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
        std::fs::write(f, text).with_context(|| format!("write {}", f.display()))?;
    }
    Ok(kept)
}

/// Registers (or reuses), connects and groups the users; returns the
/// peers and, per group, the conversation id.
async fn confab_setup(args: &Args) -> anyhow::Result<(Vec<Peer>, Vec<String>, Option<f64>)> {
    let first = args.url.split(',').next().unwrap_or_default();
    let accounts = accounts(first, args.connections, args.accounts.as_deref()).await?;
    let ws_urls: Vec<String> = args.url.split(',').map(confab_ws_url).collect();
    let mut peers = Vec::with_capacity(accounts.len());
    // Memory per connection: measured around connecting alone, once the
    // accounts exist (hashing passwords grows the heap by itself).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = args.server_pid.and_then(rss_kib);
    for (i, (name, token)) in accounts.into_iter().enumerate() {
        let (tx, stream, me) = confab_connect(&ws_urls[i % ws_urls.len()], &token).await?;
        let reader = Some(park(stream, tx.clone()));
        peers.push(Peer { tx, reader, me, name, token });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_conn = per_connection(before, args.server_pid.and_then(rss_kib), peers.len());
    let mut conversations = Vec::new();
    for group in peers.chunks_mut(args.group) {
        let members: Vec<String> = group[1..].iter().map(|p| p.name.clone()).collect();
        let req = json!({"id": 1, "type": "create_group", "name": "load", "members": members});
        let sender = &mut group[0];
        sender.tx.send(Message::text(req.to_string()))?;
        let mut stream = sender.reader.take().expect("reader").resume().await?;
        let reply = confab_reply(&mut stream, 1).await?;
        sender.reader = Some(park(stream, sender.tx.clone()));
        conversations.push(reply["conversation"]["id"].as_str().ok_or_else(|| anyhow!("no id"))?.to_owned());
    }
    Ok((peers, conversations, per_conn))
}

fn per_connection(before: Option<u64>, after: Option<u64>, n: usize) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / n.max(1) as f64)
}

fn confab_ws_url(url: &str) -> String {
    format!("{}/v1/ws", url.replacen("http", "ws", 1))
}

fn socketio_ws_url(url: &str) -> String {
    format!("{}/socket.io/?EIO=4&transport=websocket", url.replacen("http", "ws", 1))
}

/// Opens a socket.io connection as `name` and joins `room`.
async fn socketio_connect(
    ws_url: &str,
    name: &str,
    room: &str,
) -> anyhow::Result<(mpsc::UnboundedSender<Message>, SplitStream<Ws>)> {
    let (tx, mut stream) = open(ws_url).await?;
    let open = next_text(&mut stream).await?;
    if !open.starts_with('0') {
        bail!("expected engine.io open, got {open}");
    }
    tx.send(Message::text(format!("40{}", json!({"user": name}))))?;
    loop {
        let f = next_text(&mut stream).await?;
        if f.starts_with("40") {
            break;
        }
        if f.starts_with("44") {
            bail!("connect refused: {f}");
        }
    }
    tx.send(Message::text(format!("42{}", json!(["join", room]))))?;
    Ok((tx, stream))
}

async fn socketio_setup(args: &Args) -> anyhow::Result<(Vec<Peer>, Vec<String>, Option<f64>)> {
    let ws_url = socketio_ws_url(&args.url);
    let before = args.server_pid.and_then(rss_kib);
    // Rooms of their own: a server still working off an earlier run must
    // not deliver that run's messages to this one.
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..28];
    let mut peers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let name = format!("u{i}");
        let (tx, stream) = socketio_connect(&ws_url, &name, &format!("g{run}x{}", i / args.group)).await?;
        let reader = Some(park(stream, tx.clone()));
        peers.push(Peer { tx, reader, me: name.clone(), name, token: String::new() });
    }
    let rooms = (0..args.connections.div_ceil(args.group)).map(|g| format!("g{run}x{g}")).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_conn = per_connection(before, args.server_pid.and_then(rss_kib), peers.len());
    Ok((peers, rooms, per_conn))
}

/// What a receiver needs to come back after a drop.
#[derive(Clone)]
struct Receiver {
    target: Target,
    ws_url: String,
    me: String,
    name: String,
    token: String,
    room: String,
    stats: Arc<Stats>,
}

/// When a receiver drops out: every `every`, starting at `first`, for
/// `down`, until the senders stop.
#[derive(Clone, Copy)]
struct Churn {
    first: tokio::time::Instant,
    every: Duration,
    down: Duration,
    until: tokio::time::Instant,
}

/// Handles one frame; for Confab returns the request id and `has_more`
/// of an `events` reply, with its last position.
fn on_frame(r: &Receiver, seen: &mut Seen, tx: &mpsc::UnboundedSender<Message>, t: &str) -> Option<(u64, bool, i64)> {
    match r.target {
        Target::Confab => {
            // Cheap filter before parsing: only events, replays and errors matter.
            if !t.starts_with(r#"{"type":"event""#)
                && !t.contains(r#""type":"error""#)
                && !t.contains(r#""type":"events""#)
                && !t.contains(r#""type":"sent""#)
            {
                return None;
            }
            let f = serde_json::from_str::<Value>(t).ok()?;
            let mut event = |e: &Value| {
                let pos = e["pos"].as_i64().unwrap_or(0);
                if seen.insert(pos) && e["body"]["type"] == "message" && e["actor"] != r.me.as_str() {
                    r.stats.arrived(e["body"]["text"].as_str().unwrap_or_default());
                }
            };
            match f["type"].as_str() {
                Some("event") => event(&f["event"]),
                Some("error") => {
                    r.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                }
                Some("result") if f["result"]["type"] == "sent" => r.stats.acked(f["id"].as_u64().unwrap_or(0)),
                Some("result") if f["result"]["type"] == "events" => {
                    let events = f["result"]["events"].as_array().cloned().unwrap_or_default();
                    for e in &events {
                        event(e);
                    }
                    let last = events.last().and_then(|e| e["pos"].as_i64()).unwrap_or(seen.contiguous);
                    return Some((f["id"].as_u64().unwrap_or(0), f["result"]["has_more"] == true, last));
                }
                _ => {}
            }
        }
        Target::Socketio => {
            if t == "2" {
                let _ = tx.send(Message::text("3"));
                return None;
            }
            if let Some(ack) = t.strip_prefix("43") {
                let digits = ack.find(|c: char| !c.is_ascii_digit()).unwrap_or(ack.len());
                if !ack[digits..].contains("error") {
                    r.stats.acked(ack[..digits].parse().unwrap_or(0));
                }
                return None;
            }
            let body = t.strip_prefix("42")?;
            let f = serde_json::from_str::<Value>(body).ok()?;
            if f[0] == "message" && f[1]["sender"] != r.me.as_str() {
                r.stats.arrived(f[1]["text"].as_str().unwrap_or_default());
            }
        }
    }
    None
}

/// A receiver: reads until its socket closes, dropping out and coming
/// back as `churn` says.
async fn receive(
    r: Receiver,
    mut tx: mpsc::UnboundedSender<Message>,
    mut stream: SplitStream<Ws>,
    churn: Option<Churn>,
) {
    let mut seen = Seen::default();
    let mut next_drop = churn.map(|c| c.first);
    let mut request = 100u64;
    loop {
        let drop_at = next_drop.filter(|t| churn.is_some_and(|c| *t < c.until));
        loop {
            let frame = match drop_at {
                Some(at) => tokio::select! {
                    f = stream.next() => f,
                    _ = tokio::time::sleep_until(at) => break,
                },
                None => stream.next().await,
            };
            match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Some((id, true, last)) = on_frame(&r, &mut seen, &tx, t.as_str()) {
                        if id == request {
                            request += 1;
                            let req = json!({"id": request, "type": "events", "conversation": r.room, "after": last, "limit": 500});
                            let _ = tx.send(Message::text(req.to_string()));
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
        let (Some(at), Some(c)) = (drop_at, churn) else { return };
        drop(tx);
        drop(stream);
        tokio::time::sleep(c.down).await;
        (tx, stream) = loop {
            let back = match r.target {
                Target::Confab => confab_connect(&r.ws_url, &r.token).await.map(|(tx, s, _)| (tx, s)),
                Target::Socketio => socketio_connect(&r.ws_url, &r.name, &r.room).await,
            };
            match back {
                Ok(back) => break back,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        r.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        if r.target == Target::Confab {
            // Resume: everything after the last position applied (live
            // events meanwhile count once, by position).
            request += 1;
            let req = json!({"id": request, "type": "events", "conversation": r.room, "after": seen.contiguous, "limit": 500});
            let _ = tx.send(Message::text(req.to_string()));
        }
        next_drop = Some(at + c.every);
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.group < 2 || args.connections < args.group {
        bail!("--group must be at least 2 and at most --connections");
    }
    origin();
    let (mut peers, rooms, per_conn) = match args.target {
        Target::Confab => confab_setup(&args).await?,
        Target::Socketio => socketio_setup(&args).await?,
    };
    let stats = Arc::new(Stats::default());
    // Sending starts once joins and group introductions have settled.
    let begin = tokio::time::Instant::now() + Duration::from_secs(1);
    let deadline = begin + Duration::from_secs(args.seconds);
    let ws_urls: Vec<String> = match args.target {
        Target::Confab => args.url.split(',').map(confab_ws_url).collect(),
        Target::Socketio => vec![socketio_ws_url(&args.url)],
    };
    let receivers = peers.len() - rooms.len();
    let mut senders: Vec<(mpsc::UnboundedSender<Message>, String)> = Vec::new();
    for (i, p) in peers.iter_mut().enumerate() {
        let room = rooms[i / args.group].clone();
        let is_sender = i % args.group == 0;
        let r = Receiver {
            target: args.target,
            ws_url: ws_urls[i % ws_urls.len()].clone(),
            me: p.me.clone(),
            name: p.name.clone(),
            token: p.token.clone(),
            room: room.clone(),
            stats: stats.clone(),
        };
        // Receivers drop out in turn, spread over one churn period.
        let churn = (args.churn && !is_sender).then(|| {
            let every = Duration::from_secs(args.churn_every.max(1));
            let phase = every.mul_f64((i - i / args.group - 1) as f64 / receivers.max(1) as f64);
            Churn { first: begin + phase, every, down: Duration::from_millis(args.churn_down_ms), until: deadline }
        });
        // The receiver owns the only sender half of a receiving socket, so
        // dropping it closes the connection.
        let (placeholder, _) = mpsc::unbounded_channel();
        let tx = std::mem::replace(&mut p.tx, placeholder);
        if is_sender {
            senders.push((tx.clone(), room));
        }
        let stream = p.reader.take().expect("one reader").resume().await?;
        tokio::spawn(receive(r, tx, stream, churn));
    }
    tokio::time::sleep_until(begin).await;
    stats.first_send_us.store(now_us(), Ordering::Relaxed);

    let per_sender = f64::from(args.rate) / senders.len() as f64;
    let period = Duration::from_secs_f64(1.0 / per_sender);
    let mut tasks = Vec::new();
    for (i, (tx, room)) in senders.into_iter().enumerate() {
        let stats = stats.clone();
        let target = args.target;
        // Spread the senders' phases over one period.
        let start = begin + period.mul_f64(i as f64 / rooms.len() as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut id = SEND_IDS;
            loop {
                let at = tick.tick().await;
                if at >= deadline {
                    return;
                }
                let sent = now_us();
                // Unique per sender even when two ticks fall in one microsecond.
                id = (SEND_IDS + sent).max(id + 1);
                let text = format!("t{sent}");
                let client_id = uuid::Uuid::now_v7().to_string();
                let frame = match target {
                    Target::Confab => {
                        json!({"id": id, "type": "send", "conversation": room, "client_id": client_id, "text": text})
                            .to_string()
                    }
                    Target::Socketio => {
                        format!("42{id}{}", json!(["sendMessage", {"room": room, "clientId": client_id, "text": text}]))
                    }
                };
                if tx.send(Message::text(frame)).is_err() {
                    return;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let expected = stats.sent.load(Ordering::Relaxed) * (args.group as u64 - 1);
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    while Instant::now() < drain_until && stats.delivered.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    let mut acks = std::mem::take(&mut *stats.acks_us.lock().unwrap_or_else(|e| e.into_inner()));
    acks.sort_unstable();
    // Messages persisted and delivered to every receiver, per second, from
    // the first send to the last arrival.
    let span =
        stats.last_arrival_us.load(Ordering::Relaxed).saturating_sub(stats.first_send_us.load(Ordering::Relaxed));
    let throughput = if span > 0 { delivered as f64 / (args.group as f64 - 1.0) / (span as f64 / 1e6) } else { 0.0 };
    let report = json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "connections": args.connections,
        "group": args.group,
        "rate": args.rate,
        "seconds": args.seconds,
        "sent": stats.sent.load(Ordering::Relaxed),
        "send_errors": stats.send_errors.load(Ordering::Relaxed),
        "expected": expected,
        "delivered": delivered,
        "delivered_pct": if expected > 0 { delivered as f64 * 100.0 / expected as f64 } else { 0.0 },
        "p50_ms": percentile(&lat, 0.5),
        "p99_ms": percentile(&lat, 0.99),
        "p999_ms": percentile(&lat, 0.999),
        "acked": acks.len(),
        "ack_p50_ms": percentile(&acks, 0.5),
        "ack_p99_ms": percentile(&acks, 0.99),
        "churn": args.churn,
        "reconnects": stats.reconnects.load(Ordering::Relaxed),
        "delivered_msgs_per_s": throughput,
        "max_ms": percentile(&lat, 1.0),
        // Server RSS growth per connection while connecting (authenticated,
        // not yet in groups).
        "server_kib_per_conn": per_conn,
    });
    println!("{report}");
    drop(peers);
    Ok(())
}
