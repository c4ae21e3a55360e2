//! The media seam: what carries a call's audio and video once it is
//! answered. Two sides plug in here:
//!
//! - [`ExternalEngine`]: the webview's own `RTCPeerConnection` (Android
//!   WebView, WKWebView, WebView2). The UI runs WebRTC; this side only
//!   passes signaling between it and the server and reports what the UI
//!   says about the connection.
//! - `NativeEngine` (feature `native-calls`, [`super::native`]): the
//!   `webrtc` crate with Opus and real device I/O, for Linux desktops
//!   (WebKitGTK has no WebRTC), the CLI and bots.
//!
//! The call manager ([`super::manager`]) owns one [`MediaSession`] per
//! answered call: it hands the session the other side's signals and turns
//! the session's [`MediaEvent`]s into state machine inputs.

use crate::{Error, Result};
use confab_protocol::{CallId, CallSignal, IceServer};
use serde::{Deserialize, Serialize};
use specta::Type;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Everything a session needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct MediaParams {
    pub call: CallId,
    /// This side makes the WebRTC offer (the caller does).
    pub offerer: bool,
    pub video: bool,
    /// From the server, with short-lived TURN credentials.
    pub ice_servers: Vec<IceServer>,
}

/// What a running session reports. The UI reports the same for its
/// `RTCPeerConnection` (adjacently tagged: a signal has its own `type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum MediaEvent {
    /// Signaling for the other side (an offer, an answer, a candidate).
    Signal(CallSignal),
    /// Media flows (ICE and DTLS are up).
    Connected,
    /// Media stopped flowing (ICE disconnected or failed).
    Lost,
    /// The first frame of the other side's audio was decoded.
    FirstAudio,
    /// The session cannot go on (no device, a codec error, …).
    Failed(String),
}

/// Where events from a session go. Bounded: a session that floods it is
/// broken, and losing a candidate is recoverable, losing the process is not.
pub type MediaEvents = mpsc::Sender<MediaEvent>;

/// Starts one media session per answered call.
#[async_trait::async_trait]
pub trait MediaEngine: Send + Sync + 'static {
    async fn start(&self, params: MediaParams, events: MediaEvents) -> Result<Box<dyn MediaSession>>;
}

/// One call's media.
#[async_trait::async_trait]
pub trait MediaSession: Send + Sync + 'static {
    /// Signaling from the other side.
    async fn signal(&mut self, signal: CallSignal) -> Result<()>;
    /// Media was lost: the offerer starts an ICE restart (a new offer); the
    /// answerer waits for it.
    async fn restart_ice(&mut self) -> Result<()>;
    /// Mutes or unmutes this side's microphone (the other side hears
    /// silence; the call and its timing go on).
    async fn set_muted(&mut self, muted: bool) -> Result<()>;
    /// Ends the session and releases its devices and sockets.
    async fn stop(&mut self);
}

/// What [`ExternalEngine`] asks of the UI that runs WebRTC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExternalMedia {
    Start {
        params: MediaParams,
    },
    /// Signaling from the other side, for the UI's `RTCPeerConnection`.
    Signal {
        call: CallId,
        signal: CallSignal,
    },
    RestartIce {
        call: CallId,
    },
    Mute {
        call: CallId,
        muted: bool,
    },
    Stop {
        call: CallId,
    },
}

/// The webview side of the seam: sessions whose media runs elsewhere (in
/// the UI's `RTCPeerConnection`). Requests for the UI come out of the
/// channel given to [`ExternalEngine::new`]; what the UI reports goes back
/// in through [`ExternalEngine::report`].
#[derive(Clone)]
pub struct ExternalEngine {
    to_ui: mpsc::Sender<ExternalMedia>,
    current: Arc<std::sync::Mutex<Option<(CallId, MediaEvents)>>>,
}

impl ExternalEngine {
    pub fn new(to_ui: mpsc::Sender<ExternalMedia>) -> ExternalEngine {
        ExternalEngine { to_ui, current: Default::default() }
    }

    /// What the UI's `RTCPeerConnection` reports for `call`: a local
    /// signal to relay, connected, lost. Reports about another call than
    /// the running one are dropped (the UI may lag a hangup).
    pub fn report(&self, call: CallId, event: MediaEvent) -> Result<()> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((running, events)) if *running == call => {
                events.try_send(event).map_err(|_| Error::Invalid("the call is not taking media events".into()))
            }
            _ => Err(Error::Invalid("no such call".into())),
        }
    }
}

struct ExternalSession {
    call: CallId,
    to_ui: mpsc::Sender<ExternalMedia>,
    current: Arc<std::sync::Mutex<Option<(CallId, MediaEvents)>>>,
}

async fn tell_ui(to_ui: &mpsc::Sender<ExternalMedia>, what: ExternalMedia) -> Result<()> {
    to_ui.send(what).await.map_err(|_| Error::Invalid("the UI is gone".into()))
}

#[async_trait::async_trait]
impl MediaEngine for ExternalEngine {
    async fn start(&self, params: MediaParams, events: MediaEvents) -> Result<Box<dyn MediaSession>> {
        let call = params.call;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((call, events));
        tell_ui(&self.to_ui, ExternalMedia::Start { params }).await?;
        Ok(Box::new(ExternalSession { call, to_ui: self.to_ui.clone(), current: self.current.clone() }))
    }
}

#[async_trait::async_trait]
impl MediaSession for ExternalSession {
    async fn signal(&mut self, signal: CallSignal) -> Result<()> {
        tell_ui(&self.to_ui, ExternalMedia::Signal { call: self.call, signal }).await
    }

    async fn restart_ice(&mut self) -> Result<()> {
        tell_ui(&self.to_ui, ExternalMedia::RestartIce { call: self.call }).await
    }

    async fn set_muted(&mut self, muted: bool) -> Result<()> {
        tell_ui(&self.to_ui, ExternalMedia::Mute { call: self.call, muted }).await
    }

    async fn stop(&mut self) {
        {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_some_and(|(c, _)| *c == self.call) {
                *current = None;
            }
        }
        let _ = tell_ui(&self.to_ui, ExternalMedia::Stop { call: self.call }).await;
    }
}

/// The app's engine, chosen per call: the webview's WebRTC
/// ([`ExternalEngine`]) once the UI has reported that it has
/// `RTCPeerConnection` and `getUserMedia` (feature detection, not a
/// platform list), else the fallback (the native engine where it is built).
pub struct SelectedEngine {
    webview: ExternalEngine,
    fallback: Option<Arc<dyn MediaEngine>>,
    use_webview: AtomicBool,
}

impl SelectedEngine {
    pub fn new(webview: ExternalEngine, fallback: Option<Arc<dyn MediaEngine>>) -> SelectedEngine {
        SelectedEngine { webview, fallback, use_webview: AtomicBool::new(false) }
    }

    /// What the UI found. Takes effect from the next call on.
    pub fn set_webview_available(&self, available: bool) {
        self.use_webview.store(available, Ordering::Relaxed);
    }

    /// Calls run in the webview (which can then also carry video).
    pub fn uses_webview(&self) -> bool {
        self.use_webview.load(Ordering::Relaxed)
    }

    /// Some engine can carry a call here.
    pub fn can_call(&self) -> bool {
        self.uses_webview() || self.fallback.is_some()
    }

    /// Where the UI's reports go.
    pub fn webview(&self) -> &ExternalEngine {
        &self.webview
    }
}

#[async_trait::async_trait]
impl MediaEngine for SelectedEngine {
    async fn start(&self, params: MediaParams, events: MediaEvents) -> Result<Box<dyn MediaSession>> {
        match &self.fallback {
            _ if self.uses_webview() => self.webview.start(params, events).await,
            Some(native) => native.start(params, events).await,
            None => Err(Error::Invalid("this device has no media engine for calls".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_external_engine_passes_signals_both_ways_and_only_for_its_call() {
        let (to_ui, mut ui) = mpsc::channel(8);
        let engine = ExternalEngine::new(to_ui);
        let (events, mut from_session) = mpsc::channel(8);
        let call = uuid::Uuid::now_v7();
        let params = MediaParams { call, offerer: true, video: false, ice_servers: vec![] };
        let mut session = engine.start(params.clone(), events).await.unwrap();
        assert_eq!(ui.recv().await, Some(ExternalMedia::Start { params }));
        let answer = CallSignal::Answer { sdp: "v=0".into() };
        session.signal(answer.clone()).await.unwrap();
        assert_eq!(ui.recv().await, Some(ExternalMedia::Signal { call, signal: answer }));
        engine.report(call, MediaEvent::Connected).unwrap();
        assert_eq!(from_session.recv().await, Some(MediaEvent::Connected));
        assert!(engine.report(uuid::Uuid::now_v7(), MediaEvent::Connected).is_err());
        session.stop().await;
        assert_eq!(ui.recv().await, Some(ExternalMedia::Stop { call }));
        assert!(engine.report(call, MediaEvent::Lost).is_err());
    }

    #[tokio::test]
    async fn the_selected_engine_uses_the_webview_once_the_ui_reports_it() {
        let (to_ui, mut ui) = mpsc::channel(8);
        let engine = SelectedEngine::new(ExternalEngine::new(to_ui), None);
        assert!(!engine.can_call());
        let params = MediaParams { call: uuid::Uuid::now_v7(), offerer: false, video: true, ice_servers: vec![] };
        let (events, _rx) = mpsc::channel(8);
        assert!(engine.start(params.clone(), events.clone()).await.is_err());
        engine.set_webview_available(true);
        assert!(engine.can_call());
        let _session = engine.start(params.clone(), events).await.unwrap();
        assert_eq!(ui.recv().await, Some(ExternalMedia::Start { params }));
    }

    #[test]
    fn reports_and_requests_have_a_stable_json_shape_for_the_ui() {
        let call = uuid::Uuid::nil();
        let candidate =
            CallSignal::Candidate { candidate: "c".into(), sdp_mid: Some("0".into()), sdp_m_line_index: Some(0) };
        assert_eq!(
            serde_json::to_value(MediaEvent::Signal(candidate)).unwrap(),
            serde_json::json!({"type": "signal", "value": {"type": "candidate", "candidate": "c", "sdp_mid": "0", "sdp_m_line_index": 0}})
        );
        assert_eq!(
            serde_json::from_value::<MediaEvent>(serde_json::json!({"type": "failed", "value": "no microphone"}))
                .unwrap(),
            MediaEvent::Failed("no microphone".into())
        );
        assert_eq!(
            serde_json::from_value::<MediaEvent>(serde_json::json!({"type": "connected"})).unwrap(),
            MediaEvent::Connected
        );
        assert_eq!(
            serde_json::to_value(ExternalMedia::Mute { call, muted: true }).unwrap(),
            serde_json::json!({"type": "mute", "call": call, "muted": true})
        );
    }
}
