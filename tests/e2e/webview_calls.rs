//! The app's webview call path: the UI's own call module
//! (`ui/src/lib/webrtc.ts` with the generated bindings) runs in headless
//! Chromium, which has WebRTC, while the real client core runs here with
//! its webview engine. What the Tauri shell carries between the two, the
//! typed commands and the `webview-media` event, crosses a WebSocket
//! bridge instead, in the same JSON. The other side of each call is a
//! real `confab` CLI on its native engine: standard WebRTC both ways.

use crate::calls::{assert_hears, assert_peaks_near, finish, fragment, next_call, path, spawn, summary, Browser};
use confab_core::call::{ExternalEngine, ExternalMedia, MediaEvent, SelectedEngine};
use confab_core::{CallEndReason, CallPhase, CallView, Client, ClientEvent};
use confab_tests::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// The shell's part for the page: its commands answered by the same core
/// calls as `src-tauri/commands.rs`, and the engine's requests passed on
/// as the `webview-media` event. One page at a time; requests wait in
/// order for the next page to connect.
struct Bridge {
    url: String,
    to_page: mpsc::UnboundedSender<String>,
    probes: mpsc::Receiver<Value>,
    ready: mpsc::Receiver<Value>,
}

impl Bridge {
    async fn start(engine: Arc<SelectedEngine>, mut requests: mpsc::Receiver<ExternalMedia>) -> Bridge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind bridge");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let (to_page, mut outgoing) = mpsc::unbounded_channel::<String>();
        let (probe_tx, probes) = mpsc::channel(16);
        let (ready_tx, ready) = mpsc::channel(4);
        let forward = to_page.clone();
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let _ = forward.send(json!({"event": "webview-media", "payload": r}).to_string());
            }
        });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { continue };
                let (mut sink, mut stream) = ws.split();
                loop {
                    tokio::select! {
                        Some(out) = outgoing.recv() => {
                            if sink.send(Message::text(out)).await.is_err() { break; }
                        }
                        msg = stream.next() => match msg {
                            Some(Ok(Message::Text(t))) => {
                                let v: Value = serde_json::from_str(&t).expect("page JSON");
                                if let Some(p) = v.get("probe") {
                                    let _ = probe_tx.send(p.clone()).await;
                                } else if let Some(r) = v.get("ready") {
                                    let _ = ready_tx.send(r.clone()).await;
                                } else {
                                    let reply = dispatch(&engine, &v);
                                    if sink.send(Message::text(reply.to_string())).await.is_err() { break; }
                                }
                            }
                            Some(Ok(_)) => {}
                            None | Some(Err(_)) => break,
                        },
                    }
                }
            }
        });
        Bridge { url, to_page, probes, ready }
    }

    /// The page has connected the call module; what it can do.
    async fn ready(&mut self) -> Value {
        tokio::time::timeout(T, self.ready.recv()).await.expect("the page did not start").expect("bridge")
    }

    /// What the page heard, sent and shows since the last probe.
    async fn probe(&mut self) -> Value {
        self.to_page.send(json!({"probe": true}).to_string()).expect("bridge");
        tokio::time::timeout(T, self.probes.recv()).await.expect("the page did not answer").expect("bridge")
    }
}

/// `call_capabilities` and `report_call_media` as the shell has them.
fn dispatch(engine: &SelectedEngine, v: &Value) -> Value {
    let args = &v["args"];
    let result = match v["cmd"].as_str() {
        Some("call_capabilities") => {
            engine.set_webview_available(args["webviewWebrtc"].as_bool().unwrap_or(false));
            Ok(json!({"audio": engine.can_call(), "video": engine.uses_webview()}))
        }
        Some("report_call_media") => {
            let call = serde_json::from_value(args["call"].clone());
            let event = serde_json::from_value::<MediaEvent>(args["event"].clone());
            match (call, event) {
                (Ok(call), Ok(event)) => {
                    engine.webview().report(call, event).map(|()| Value::Null).map_err(|e| e.to_string())
                }
                (c, e) => panic!("the page sent a malformed report: {c:?} {e:?} in {v}"),
            }
        }
        other => panic!("the call module invoked {other:?}, which the shell does not have"),
    };
    match result {
        Ok(ok) => json!({"id": v["id"], "ok": ok}),
        Err(message) => json!({"id": v["id"], "err": {"kind": "invalid_input", "message": message}}),
    }
}

/// The page, bundled from the UI's sources next to a copy of its HTML.
fn build_page(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_owned();
    let here = root.join("tests/e2e/browser");
    let rolldown = root.join("ui/node_modules/.bin/rolldown");
    assert!(rolldown.exists(), "run `npm ci` in ui/ first (the test bundles the UI's call module with its rolldown)");
    let out = dir.join("webview-call.js");
    let status = std::process::Command::new(&rolldown)
        .arg(here.join("webview-call.ts"))
        .args(["--format", "iife", "--platform", "browser", "--file"])
        .arg(&out)
        .current_dir(root.join("ui"))
        .status()
        .expect("run rolldown");
    assert!(status.success(), "bundling the call module failed");
    let html = dir.join("webview-call.html");
    std::fs::copy(here.join("webview-call.html"), &html).expect("copy page");
    html
}

fn page_url(html: &Path, bridge: &str) -> String {
    format!("file://{}#{}", html.display(), fragment(&json!({ "bridge": bridge })))
}

/// The app's device: the real core with the webview engine, as the shell
/// makes it (no native fallback, so a call can only run in the page).
struct App {
    client: Client,
    events: broadcast::Receiver<ClientEvent>,
    bridge: Bridge,
}

impl App {
    async fn start(root: &Path, server: &str) -> App {
        let (tx, requests) = mpsc::channel(256);
        let engine = Arc::new(SelectedEngine::new(ExternalEngine::new(tx), None));
        let client = Client::open(&root.join("app")).await.expect("profile").with_media_engine(engine.clone());
        client.register(server, "alice", PASSWORD).await.expect("register");
        let events = client.subscribe();
        client.start().await.expect("start");
        client.wait_connected(T).await.expect("connected");
        let bridge = Bridge::start(engine, requests).await;
        App { client, events, bridge }
    }

    async fn until(&mut self, what: &str, want: impl FnMut(&CallView) -> bool) -> CallView {
        next_call(&mut self.events, what, want).await
    }
}

fn assert_page_heard(probe: &Value, want_hz: f64) {
    let packets = probe["stats"]["in_audio_packets"].as_u64().unwrap_or(0);
    assert!(packets > 100, "the page got {packets} audio packets: {probe}");
    assert_peaks_near(&probe["peaks"], want_hz, "the page");
}

#[test]
fn the_ui_call_module_in_a_browser_calls_and_answers_a_cli_through_the_core_and_a_refused_microphone_says_so() {
    if ran_in_loopback_namespace(
        "webview_calls::the_ui_call_module_in_a_browser_calls_and_answers_a_cli_through_the_core_and_a_refused_microphone_says_so",
    ) {
        return;
    }
    let dir = temp_dir("call-webview");
    let server = Server::start(dir.path());
    let html = build_page(dir.path());
    let (page_tone, cli_tone) = (dir.path().join("440.wav"), dir.path().join("660.wav"));
    write_tone(&page_tone, 440.0, 20.0);
    write_tone(&cli_tone, 660.0, 20.0);
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let mut app = App::start(dir.path(), &server.url).await;
        let bob = Profile::register(dir.path(), &server.url, "bob");
        let conv: confab_protocol::ConversationId = bob.ok(&["dm", "alice"]).parse().expect("conversation id");

        // The module tells the shell the webview has WebRTC: video is offered.
        let url = page_url(&html, &app.bridge.url);
        let browser = Browser::open(&url, &page_tone, &dir.path().join("chromium-1.log"));
        let caps = app.bridge.ready().await;
        assert_eq!(caps, json!({"audio": true, "video": true}));

        // The CLI makes a video call; the app answers it, its media in the page.
        let heard = dir.path().join("cli-heard-1.wav");
        let cli = spawn(
            &bob,
            &["call", "alice", "--video", "--json", "--for", "6s", "--play", path(&cli_tone), "--record", path(&heard)],
        );
        let ring = app.until("ringing", |c| c.phase == CallPhase::Ringing).await;
        assert!(ring.video);
        app.client.accept_call(ring.call).await.expect("accept");
        app.until("active", |c| c.call == ring.call && matches!(c.phase, CallPhase::Active { .. })).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let probe = app.bridge.probe().await;
        let (ok, lines, out) =
            tokio::task::spawn_blocking(move || finish(cli, Duration::from_secs(60))).await.expect("join");
        assert!(ok, "the CLI's call to the app failed:\n{out}");
        let s = summary(&lines);
        assert!(s["video_packets_received"].as_u64().unwrap_or(0) > 20, "no video from the page's camera: {s}");
        assert_hears(&heard, 440.0, 660.0, "the CLI (calling the page)");
        assert_page_heard(&probe, 660.0);
        assert_eq!(probe["camera"], true, "{probe}");
        assert_eq!(probe["local_video"], true, "{probe}");
        assert!(probe["stats"]["out_video_packets"].as_u64().unwrap_or(0) > 20, "{probe}");
        let end = app.until("ended", |c| c.call == ring.call && matches!(c.phase, CallPhase::Ended { .. })).await;
        assert!(matches!(end.phase, CallPhase::Ended { reason: CallEndReason::HungUp, error: None, .. }), "{end:?}");
        // The page let go of the call (its devices and connection).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.bridge.probe().await["call"], Value::Null);

        // The app calls the CLI (voice), the page making the offer, and hangs up.
        let heard = dir.path().join("cli-heard-2.wav");
        let cli =
            spawn(&bob, &["answer", "--json", "--wait", "30s", "--play", path(&cli_tone), "--record", path(&heard)]);
        // Until the CLI's device is online, the call would ring nowhere.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let call = app.client.call(conv, false).await.expect("dial");
        app.until("active", |c| c.call == call && matches!(c.phase, CallPhase::Active { .. })).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let probe = app.bridge.probe().await;
        app.client.hang_up(call).await.expect("hang up");
        let (ok, lines, out) =
            tokio::task::spawn_blocking(move || finish(cli, Duration::from_secs(60))).await.expect("join");
        assert!(ok, "the CLI's answer to the app failed:\n{out}");
        assert_eq!(summary(&lines)["reason"], "hung_up", "{out}");
        assert_hears(&heard, 440.0, 660.0, "the CLI (called by the page)");
        assert_page_heard(&probe, 660.0);
        assert_eq!(probe["camera"], false, "a voice call opened the camera: {probe}");
        drop(browser);

        // A page whose microphone is refused fails the call with a clear
        // message, and the other side sees it end.
        let browser = Browser::open_with(&url, &page_tone, &dir.path().join("chromium-2.log"), false);
        app.bridge.ready().await;
        let heard = dir.path().join("cli-heard-3.wav");
        let cli = spawn(
            &bob,
            &["call", "alice", "--json", "--for", "6s", "--play", path(&cli_tone), "--record", path(&heard)],
        );
        let ring = app.until("ringing", |c| c.phase == CallPhase::Ringing).await;
        app.client.accept_call(ring.call).await.expect("accept");
        let end = app.until("ended", |c| c.call == ring.call && matches!(c.phase, CallPhase::Ended { .. })).await;
        let CallPhase::Ended { reason, error, .. } = &end.phase else { unreachable!() };
        assert_eq!(*reason, CallEndReason::Failed, "{end:?}");
        let error = error.clone().unwrap_or_default();
        assert!(error.contains("may not use the microphone"), "{error}");
        let (_, lines, out) =
            tokio::task::spawn_blocking(move || finish(cli, Duration::from_secs(60))).await.expect("join");
        assert_eq!(summary(&lines)["reason"], "hung_up", "{out}");
        drop(browser);
    });
}
