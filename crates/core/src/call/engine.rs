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
use std::sync::Arc;
use tokio::sync::mpsc;

/// Everything a session needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaParams {
    pub call: CallId,
    /// This side makes the WebRTC offer (the caller does).
    pub offerer: bool,
    pub video: bool,
    /// From the server, with short-lived TURN credentials.
    pub ice_servers: Vec<IceServer>,
}

/// What a running session reports.
#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, PartialEq)]
pub enum ExternalMedia {
    Start(MediaParams),
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
        tell_ui(&self.to_ui, ExternalMedia::Start(params)).await?;
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
        assert_eq!(ui.recv().await, Some(ExternalMedia::Start(params)));
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
}
