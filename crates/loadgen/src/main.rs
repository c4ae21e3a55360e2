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
    /// The server's base URL (http://host:port).
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
}

impl Stats {
    fn arrived(&self, text: &str) {
        if let Some(sent) = text.strip_prefix('t').and_then(|t| t.parse::<u64>().ok()) {
            let latency = now_us().saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.latencies_us.lock().unwrap_or_else(|e| e.into_inner()).push(latency);
        }
    }
}

/// One connection: frames to send go through `tx`; its reader runs once
/// the setup is done.
struct Peer {
    tx: mpsc::UnboundedSender<Message>,
    reader: Option<SplitStream<Ws>>,
    /// The user id (Confab) or name (socket.io) its own messages carry.
    me: String,
    name: String,
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

/// Registers, connects and groups the users; returns the peers and, per
/// group, the conversation id.
async fn confab_setup(args: &Args) -> anyhow::Result<(Vec<Peer>, Vec<String>)> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..28];
    let names: Vec<String> = (0..args.connections).map(|i| format!("lg{run}x{i}")).collect();
    let http = reqwest::Client::new();
    let tokens: Vec<String> = futures_util::stream::iter(names.iter())
        .map(|n| register(&http, &args.url, n))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let ws_url = format!("{}/v1/ws", args.url.replacen("http", "ws", 1));
    let mut peers = Vec::with_capacity(names.len());
    for (name, token) in names.iter().zip(tokens) {
        let (tx, mut stream) = open(&ws_url).await?;
        tx.send(Message::text(json!({"id": 0, "type": "hello", "token": token, "protocol": 1}).to_string()))?;
        let welcome = confab_reply(&mut stream, 0).await?;
        let me = welcome["user"].as_str().ok_or_else(|| anyhow!("no user id"))?.to_owned();
        peers.push(Peer { tx, reader: Some(stream), me, name: name.clone() });
    }
    let mut conversations = Vec::new();
    for group in peers.chunks_mut(args.group) {
        let members: Vec<String> = group[1..].iter().map(|p| p.name.clone()).collect();
        let req = json!({"id": 1, "type": "create_group", "name": "load", "members": members});
        let sender = &mut group[0];
        sender.tx.send(Message::text(req.to_string()))?;
        let reply = confab_reply(sender.reader.as_mut().expect("reader"), 1).await?;
        conversations.push(reply["conversation"]["id"].as_str().ok_or_else(|| anyhow!("no id"))?.to_owned());
    }
    Ok((peers, conversations))
}

async fn socketio_setup(args: &Args) -> anyhow::Result<(Vec<Peer>, Vec<String>)> {
    let ws_url = format!("{}/socket.io/?EIO=4&transport=websocket", args.url.replacen("http", "ws", 1));
    let mut peers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (tx, mut stream) = open(&ws_url).await?;
        let open = next_text(&mut stream).await?;
        if !open.starts_with('0') {
            bail!("expected engine.io open, got {open}");
        }
        let name = format!("u{i}");
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
        let room = format!("g{}", i / args.group);
        tx.send(Message::text(format!("42{}", json!(["join", room]))))?;
        peers.push(Peer { tx, reader: Some(stream), me: name.clone(), name });
    }
    let rooms = (0..args.connections.div_ceil(args.group)).map(|g| format!("g{g}")).collect();
    Ok((peers, rooms))
}

fn spawn_reader(target: Target, peer: &mut Peer, stats: Arc<Stats>) {
    let mut stream = peer.reader.take().expect("one reader");
    let (me, tx) = (peer.me.clone(), peer.tx.clone());
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(t) = msg else { continue };
            let t = t.as_str();
            match target {
                Target::Confab => {
                    // Cheap filter before parsing: only events matter.
                    if !t.starts_with(r#"{"type":"event""#) && !t.contains(r#""type":"error""#) {
                        continue;
                    }
                    let Ok(f) = serde_json::from_str::<Value>(t) else { continue };
                    if f["type"] == "error" {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let e = &f["event"];
                    if e["body"]["type"] == "message" && e["actor"] != me.as_str() {
                        stats.arrived(e["body"]["text"].as_str().unwrap_or_default());
                    }
                }
                Target::Socketio => {
                    if t == "2" {
                        let _ = tx.send(Message::text("3"));
                        continue;
                    }
                    let Some(body) = t.strip_prefix("42") else { continue };
                    let Ok(f) = serde_json::from_str::<Value>(body) else { continue };
                    if f[0] == "message" && f[1]["sender"] != me.as_str() {
                        stats.arrived(f[1]["text"].as_str().unwrap_or_default());
                    }
                }
            }
        }
    });
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
    let rss_before = args.server_pid.and_then(rss_kib);
    let (mut peers, rooms) = match args.target {
        Target::Confab => confab_setup(&args).await?,
        Target::Socketio => socketio_setup(&args).await?,
    };
    let stats = Arc::new(Stats::default());
    for p in &mut peers {
        spawn_reader(args.target, p, stats.clone());
    }
    // Let joins and group introductions settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = args.server_pid.and_then(rss_kib);

    let senders: Vec<(mpsc::UnboundedSender<Message>, String)> =
        peers.chunks(args.group).zip(&rooms).map(|(g, room)| (g[0].tx.clone(), room.clone())).collect();
    let per_sender = f64::from(args.rate) / senders.len() as f64;
    let period = Duration::from_secs_f64(1.0 / per_sender);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (i, (tx, room)) in senders.into_iter().enumerate() {
        let stats = stats.clone();
        let target = args.target;
        // Spread the senders' phases over one period.
        let start = tokio::time::Instant::now() + period.mul_f64(i as f64 / rooms.len() as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut id = 10u64;
            loop {
                let at = tick.tick().await;
                if at >= deadline {
                    return;
                }
                id += 1;
                let text = format!("t{}", now_us());
                let client_id = uuid::Uuid::now_v7().to_string();
                let frame = match target {
                    Target::Confab => {
                        json!({"id": id, "type": "send", "conversation": room, "client_id": client_id, "text": text})
                            .to_string()
                    }
                    Target::Socketio => {
                        format!("42{}", json!(["sendMessage", {"room": room, "clientId": client_id, "text": text}]))
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
        "max_ms": percentile(&lat, 1.0),
        "server_kib_per_conn": match (rss_before, rss_after) {
            (Some(b), Some(a)) => json!((a.saturating_sub(b)) as f64 / args.connections as f64),
            _ => Value::Null,
        },
    });
    println!("{report}");
    drop(peers);
    Ok(())
}
