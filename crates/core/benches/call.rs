//! How fast a call starts: from the callee pressing accept to the first
//! decoded audio frame on each side, and to media connected, over 20 calls
//! between two in-process clients with native engines (sending silence)
//! and an in-process server, all on loopback.
//!
//! Run with `cargo bench -p confab-core --bench call`. Target (issue 9):
//! accept → first decoded audio frame under 100 ms.

use confab_core::call::native::audio::{AudioInput, AudioOutput};
use confab_core::call::native::{NativeConfig, NativeEngine, NativeStats};
use confab_core::{CallPhase, Client, ClientEvent};
use confab_server::{Config, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
const CALLS: usize = 20;

async fn device(dir: &std::path::Path, url: &str, name: &str) -> (Client, Arc<NativeEngine>) {
    let engine = NativeEngine::new(NativeConfig {
        input: AudioInput::Silence,
        output: AudioOutput::Discard,
        bind: vec![[127, 0, 0, 1].into()],
        relay_only: false,
    });
    let engine = Arc::new(engine);
    let client = Client::open(&dir.join(name)).await.expect("profile").with_media_engine(engine.clone());
    client.register(url, name, PASSWORD).await.expect("register");
    client.start().await.expect("start");
    client.wait_connected(Duration::from_secs(10)).await.expect("connected");
    (client, engine)
}

async fn until(events: &mut tokio::sync::broadcast::Receiver<ClientEvent>, want: impl Fn(&CallPhase) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(ClientEvent::Call { call }) = events.recv().await {
                if want(&call.phase) {
                    return;
                }
            }
        }
    })
    .await
    .expect("call phase");
}

/// When `call`'s session first decoded a frame.
async fn first_audio(engine: &NativeEngine, call: confab_protocol::CallId, from: Instant) -> Duration {
    let heard = |s: Arc<NativeStats>| s.call == Some(call) && s.audio_frames_decoded.load(Ordering::Relaxed) > 0;
    while !heard(engine.stats()) {
        tokio::time::sleep(Duration::from_micros(500)).await;
        assert!(from.elapsed() < Duration::from_secs(20), "no audio");
    }
    from.elapsed()
}

struct Side {
    client: Client,
    engine: Arc<NativeEngine>,
    events: tokio::sync::broadcast::Receiver<ClientEvent>,
}

fn row(name: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
        ms(xs[0]),
        ms(xs[xs.len() / 2]),
        ms(xs[xs.len() * 9 / 10]),
        ms(xs[xs.len() - 1])
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { requests_per_sec: 100_000, request_burst: 100_000, ..Limits::default() };
    let mut config = Config::new("127.0.0.1:0".parse().expect("addr"), dir.path().join("server.db"));
    config.limits = limits;
    let server = confab_server::start(config).await.expect("server");
    let url = format!("http://{}", server.addr);
    let (alice, alice_stats) = device(dir.path(), &url, "alice").await;
    let (bob, bob_stats) = device(dir.path(), &url, "bob").await;
    let conv = alice.open_direct("bob").await.expect("dm");
    let mut alice = Side { events: alice.subscribe(), client: alice, engine: alice_stats };
    let mut bob = Side { events: bob.subscribe(), client: bob, engine: bob_stats };
    let (mut connected, mut callee_hears, mut caller_hears) = (Vec::new(), Vec::new(), Vec::new());
    // They take turns calling: call attempts are rate-limited per user.
    for i in 0..CALLS {
        let (caller, callee) = if i % 2 == 0 { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        let call = caller.client.call(conv, false).await.expect("dial");
        until(&mut callee.events, |p| *p == CallPhase::Ringing).await;
        let accepted = Instant::now();
        callee.client.accept_call(call).await.expect("accept");
        let (c, b, a) = tokio::join!(
            async {
                until(&mut callee.events, |p| matches!(p, CallPhase::Active { .. })).await;
                accepted.elapsed()
            },
            first_audio(&callee.engine, call, accepted),
            first_audio(&caller.engine, call, accepted),
        );
        connected.push(c);
        callee_hears.push(b);
        caller_hears.push(a);
        caller.client.hang_up(call).await.expect("hang up");
        until(&mut caller.events, |p| matches!(p, CallPhase::Ended { .. })).await;
        until(&mut callee.events, |p| matches!(p, CallPhase::Ended { .. })).await;
    }
    let (alice, bob) = (alice.client, bob.client);
    println!("Accept → …, {CALLS} calls on loopback (ms)\n");
    println!("| from the callee's accept to | min | median | p90 | max |");
    println!("|---|---|---|---|---|");
    row("media connected (callee)", connected);
    row("first decoded frame at the callee", callee_hears);
    row("first decoded frame at the caller", caller_hears);
    alice.stop().await;
    bob.stop().await;
    server.shutdown().await;
}
