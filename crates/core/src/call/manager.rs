//! The call manager: one task per started client that owns this device's
//! call. It feeds the pure [`machine`](super::machine) with what the user
//! asks, what the server says, what the media session reports and the
//! passing of time, and carries out the actions that come back: requests
//! to the server, starting and stopping the [`MediaSession`], and
//! [`ClientEvent::Call`] for the UI.

use super::engine::{MediaEngine, MediaEvent, MediaParams, MediaSession};
use super::machine::{step, Action, CallInput, CallState, Ending};
use crate::cache::now_ms;
use crate::types::{CallEndReason, CallPhase, CallView, ClientEvent};
use crate::{Error, Inner, Result};
use confab_protocol::{
    CallEnd, CallId, CallUpdate, ConversationId, ErrorCode, IceServer, Millis, Reply, RequestBody, UserId,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A `call` frame from the server.
#[derive(Debug)]
pub(crate) struct CallFrame {
    pub call: CallId,
    pub conversation: ConversationId,
    pub peer: UserId,
    pub update: CallUpdate,
}

/// What the user asks of the manager.
pub(crate) enum Command {
    Dial { conversation: ConversationId, video: bool, reply: oneshot::Sender<Result<CallId>> },
    Accept { call: CallId, reply: oneshot::Sender<Result<()>> },
    Decline { call: CallId, reply: oneshot::Sender<Result<()>> },
    HangUp { call: CallId, reply: oneshot::Sender<Result<()>> },
    Mute { call: CallId, muted: bool, reply: oneshot::Sender<Result<()>> },
    Current { reply: oneshot::Sender<Option<CallView>> },
}

/// What this device knows about its call beyond the machine's state.
struct Details {
    conversation: ConversationId,
    peer: UserId,
    peer_name: String,
    video: bool,
    outgoing: bool,
    ice_servers: Vec<IceServer>,
    /// When media first flowed (for the duration this device reports).
    active_since: Option<Millis>,
    error: Option<String>,
    muted: bool,
}

struct Manager {
    inner: Arc<Inner>,
    engine: Option<Arc<dyn MediaEngine>>,
    state: CallState,
    details: Option<Details>,
    session: Option<Box<dyn MediaSession>>,
    /// Signals that came before the session started.
    early: Vec<confab_protocol::CallSignal>,
    media_tx: mpsc::Sender<(CallId, MediaEvent)>,
}

fn reason_of(end: Ending) -> CallEndReason {
    match end {
        Ending::Server(CallEnd::Declined) => CallEndReason::Declined,
        Ending::Server(CallEnd::Cancelled) => CallEndReason::Cancelled,
        Ending::Server(CallEnd::Missed) => CallEndReason::Missed,
        Ending::Server(CallEnd::HungUp) => CallEndReason::HungUp,
        Ending::Server(CallEnd::Superseded) => CallEndReason::Superseded,
        Ending::Server(CallEnd::ConnectionLost) => CallEndReason::ConnectionLost,
        Ending::AnsweredElsewhere => CallEndReason::AnsweredElsewhere,
        Ending::DeclinedElsewhere => CallEndReason::DeclinedElsewhere,
        Ending::Busy => CallEndReason::Busy,
        Ending::ConnectionLost => CallEndReason::ConnectionLost,
        Ending::Local => CallEndReason::EndedHere,
    }
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    engine: Option<Arc<dyn MediaEngine>>,
    mut commands: mpsc::Receiver<Command>,
    mut frames: mpsc::Receiver<CallFrame>,
) {
    let (media_tx, mut media_rx) = mpsc::channel(256);
    let mut m =
        Manager { inner, engine, state: CallState::Idle, details: None, session: None, early: Vec::new(), media_tx };
    let mut link_state = m.inner.link().state();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => m.command(cmd).await,
                None => break,
            },
            frame = frames.recv() => match frame {
                Some(frame) => m.frame(frame).await,
                None => break,
            },
            Some((call, event)) = media_rx.recv() => m.media(call, event).await,
            changed = link_state.changed() => {
                if changed.is_err() { break; }
                let connected = *link_state.borrow_and_update() == crate::ConnectionState::Connected;
                m.input(if connected { CallInput::LinkRestored } else { CallInput::LinkDropped }).await;
            }
            _ = tick.tick() => m.input(CallInput::Tick).await,
        }
    }
    if let Some(mut s) = m.session.take() {
        s.stop().await;
    }
}

impl Manager {
    fn view(&self) -> Option<CallView> {
        let d = self.details.as_ref()?;
        let call = self.state.call()?;
        let phase = match &self.state {
            CallState::Idle => return None,
            CallState::Outgoing { .. } => CallPhase::Calling,
            CallState::Incoming { .. } => CallPhase::Ringing,
            CallState::Connecting { .. } => CallPhase::Connecting,
            CallState::Active { since, .. } => CallPhase::Active { since: *since },
            CallState::Reconnecting { since, .. } => CallPhase::Reconnecting { since: *since },
            CallState::Ended { end, .. } => CallPhase::Ended {
                reason: if d.error.is_some() { CallEndReason::Failed } else { reason_of(*end) },
                duration_ms: d.active_since.map(|s| now_ms() - s),
                error: d.error.clone(),
            },
        };
        Some(CallView {
            call,
            conversation: d.conversation,
            peer: d.peer,
            peer_name: d.peer_name.clone(),
            video: d.video,
            outgoing: d.outgoing,
            muted: d.muted,
            phase,
        })
    }

    /// Steps the machine and carries out what it says.
    async fn input(&mut self, input: CallInput) {
        let (next, actions) = step(&self.state, &input, now_ms());
        let changed = next != self.state;
        if let (CallState::Active { since, .. }, Some(d)) = (&next, self.details.as_mut()) {
            d.active_since.get_or_insert(*since);
        }
        self.state = next;
        for action in actions {
            self.act(action).await;
        }
        if changed {
            if let Some(view) = self.view() {
                self.inner.emit(ClientEvent::Call { call: view });
            }
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            // Invites are sent by `dial`, which needs the reply.
            Action::SendInvite { .. } => {}
            // Accept is sent by `accept`, which needs the ICE servers.
            Action::SendAccept { .. } => {}
            Action::SendDecline { call } => self.fire(RequestBody::CallDecline { call }),
            Action::SendHangup { call } => self.fire(RequestBody::CallHangup { call }),
            // Ringing is the UI's: the Ringing phase is in the view.
            Action::Ring | Action::StopRinging => {}
            Action::StartMedia { offerer, video } => self.start_media(offerer, video).await,
            Action::RestartIce => {
                if let Some(s) = self.session.as_mut() {
                    if let Err(e) = s.restart_ice().await {
                        tracing::warn!(%e, "ICE restart");
                    }
                }
            }
            Action::SendRejoin { call } => self.rejoin(call).await,
            Action::StopMedia => {
                if let Some(mut s) = self.session.take() {
                    s.stop().await;
                }
                self.early.clear();
            }
        }
    }

    /// Asks for our place in the call back after a reconnect.
    async fn rejoin(&mut self, call: CallId) {
        match self.inner.link().request(RequestBody::CallRejoin { call }).await {
            Ok(Reply::Call { ice_servers, .. }) => {
                if let Some(d) = self.details.as_mut() {
                    d.ice_servers = ice_servers;
                }
                Box::pin(self.input(CallInput::Rejoined { call })).await;
            }
            Err(Error::Server { code: ErrorCode::NotFound, .. }) => {
                Box::pin(self.input(CallInput::RejoinRefused { call })).await;
            }
            // The link dropped again (the next restore retries) or the
            // server misbehaved; the media grace still bounds the call.
            Ok(other) => tracing::warn!(?other, "call rejoin: unexpected reply"),
            Err(e) => tracing::debug!(%e, "call rejoin"),
        }
    }

    fn fire(&self, body: RequestBody) {
        self.inner.link().send_and_forget(body);
    }

    async fn start_media(&mut self, offerer: bool, video: bool) {
        let Some(call) = self.state.call() else { return };
        let Some(engine) = self.engine.clone() else {
            return self.fail("this device has no media engine for calls".into()).await;
        };
        let ice_servers = self.details.as_ref().map(|d| d.ice_servers.clone()).unwrap_or_default();
        let (tx, mut rx) = mpsc::channel(256);
        let forward = self.media_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send((call, event)).await.is_err() {
                    return;
                }
            }
        });
        match engine.start(MediaParams { call, offerer, video, ice_servers }, tx).await {
            Ok(mut session) => {
                for signal in std::mem::take(&mut self.early) {
                    if let Err(e) = session.signal(signal).await {
                        tracing::warn!(%e, "early call signal");
                    }
                }
                self.session = Some(session);
            }
            Err(e) => self.fail(e.to_string()).await,
        }
    }

    /// The media cannot run: hang up, saying why.
    async fn fail(&mut self, error: String) {
        tracing::warn!(%error, "call failed");
        if let Some(d) = self.details.as_mut() {
            d.error = Some(error);
        }
        Box::pin(self.input(CallInput::HangUp)).await;
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { conversation, video, reply } => {
                let _ = reply.send(self.dial(conversation, video).await);
            }
            Command::Accept { call, reply } => {
                let _ = reply.send(self.accept(call).await);
            }
            Command::Decline { call, reply } => {
                let result = self.ours(call, matches!(self.state, CallState::Incoming { .. }));
                if result.is_ok() {
                    self.input(CallInput::Decline).await;
                }
                let _ = reply.send(result);
            }
            Command::HangUp { call, reply } => {
                let live = !matches!(self.state, CallState::Idle | CallState::Ended { .. });
                let result = self.ours(call, live);
                if result.is_ok() {
                    self.input(CallInput::HangUp).await;
                }
                let _ = reply.send(result);
            }
            Command::Mute { call, muted, reply } => {
                let result = self.ours(call, self.session.is_some());
                let result = match (result, self.session.as_mut()) {
                    (Ok(()), Some(s)) => s.set_muted(muted).await,
                    (r, _) => r,
                };
                if result.is_ok() {
                    if let Some(d) = self.details.as_mut() {
                        d.muted = muted;
                    }
                    if let Some(view) = self.view() {
                        self.inner.emit(ClientEvent::Call { call: view });
                    }
                }
                let _ = reply.send(result);
            }
            Command::Current { reply } => {
                let _ = reply.send(self.view());
            }
        }
    }

    fn ours(&self, call: CallId, ok_state: bool) -> Result<()> {
        if self.state.call() == Some(call) && ok_state {
            Ok(())
        } else {
            Err(Error::Invalid("no such call on this device".into()))
        }
    }

    async fn peer_name(&self, peer: UserId) -> String {
        self.inner.cache.username(peer).await.ok().flatten().unwrap_or_else(|| peer.to_string())
    }

    async fn dial(&mut self, conversation: ConversationId, video: bool) -> Result<CallId> {
        if !matches!(self.state, CallState::Idle | CallState::Ended { .. }) {
            return Err(Error::Invalid("already in a call".into()));
        }
        if self.engine.is_none() {
            return Err(Error::Invalid("this device has no media engine for calls".into()));
        }
        let call = uuid::Uuid::now_v7();
        // Frames that arrive meanwhile (their glaring invite) wait in the
        // queue and are handled after the machine knows of our call.
        let reply = self.inner.link().request(RequestBody::CallInvite { conversation, call, video }).await;
        let (peer, ice_servers, busy) = match reply {
            Ok(Reply::Call { peer, ice_servers, .. }) => (peer, ice_servers, false),
            Ok(other) => return Err(Error::Protocol(format!("expected a call, got {other:?}"))),
            Err(Error::Server { code: ErrorCode::Busy, .. }) => {
                let peer = self.inner.cache.other_member(conversation, self.inner.me).await?.unwrap_or_default();
                (peer, Vec::new(), true)
            }
            Err(e) => return Err(e),
        };
        self.details = Some(Details {
            conversation,
            peer,
            peer_name: self.peer_name(peer).await,
            video,
            outgoing: true,
            ice_servers,
            active_since: None,
            error: None,
            muted: false,
        });
        self.early.clear();
        self.input(CallInput::Dial { call, video }).await;
        if busy {
            self.input(CallInput::Busy { call }).await;
        }
        Ok(call)
    }

    async fn accept(&mut self, call: CallId) -> Result<()> {
        self.ours(call, matches!(self.state, CallState::Incoming { .. }))?;
        if self.engine.is_none() {
            return Err(Error::Invalid("this device has no media engine for calls".into()));
        }
        match self.inner.link().request(RequestBody::CallAccept { call }).await {
            Ok(Reply::Call { ice_servers, .. }) => {
                if let Some(d) = self.details.as_mut() {
                    d.ice_servers = ice_servers;
                }
                self.input(CallInput::Accept).await;
                Ok(())
            }
            Ok(other) => Err(Error::Protocol(format!("expected a call, got {other:?}"))),
            Err(Error::Server { code: ErrorCode::NotFound, .. }) => {
                // Gone meanwhile: another device took it, or it ended.
                self.input(CallInput::Server { call, update: CallUpdate::AnsweredElsewhere }).await;
                Err(Error::Invalid("the call is no longer ringing here".into()))
            }
            Err(e) => Err(e),
        }
    }

    async fn frame(&mut self, frame: CallFrame) {
        let CallFrame { call, conversation, peer, update } = frame;
        match &update {
            CallUpdate::Signal { signal } => {
                if self.state.call() != Some(call) {
                    return;
                }
                match self.session.as_mut() {
                    Some(s) => {
                        if let Err(e) = s.signal(signal.clone()).await {
                            tracing::warn!(%e, "call signal");
                        }
                    }
                    None if self.early.len() < 64 => self.early.push(signal.clone()),
                    None => {}
                }
                return;
            }
            CallUpdate::Incoming { video } => {
                let idle = matches!(self.state, CallState::Idle | CallState::Ended { .. });
                let glare_wins = matches!(self.state, CallState::Outgoing { call: ours, .. } if call < ours);
                if idle || glare_wins {
                    self.details = Some(Details {
                        conversation,
                        peer,
                        peer_name: self.peer_name(peer).await,
                        video: *video,
                        outgoing: false,
                        ice_servers: Vec::new(),
                        active_since: None,
                        error: None,
                        muted: false,
                    });
                    self.early.clear();
                }
            }
            _ => {}
        }
        self.input(CallInput::Server { call, update }).await;
    }

    async fn media(&mut self, call: CallId, event: MediaEvent) {
        if self.state.call() != Some(call) || self.session.is_none() {
            return;
        }
        match event {
            MediaEvent::Signal(signal) => self.fire(RequestBody::CallSignal { call, signal }),
            MediaEvent::Connected => self.input(CallInput::MediaConnected).await,
            MediaEvent::Lost => self.input(CallInput::MediaLost).await,
            MediaEvent::FirstAudio => tracing::debug!(%call, "first audio"),
            MediaEvent::Failed(e) => self.fail(e).await,
        }
    }
}
