//! Waking from a push: registering where this device is woken, and the
//! catch-up a phone runs in the little time the OS gives a background task.
//!
//! A push carries no content ([`confab_protocol::Wake`]): at most which
//! conversation changed and, for a call, which call rings. So a wake-up
//! always does the same thing, [`Client::catch_up`]: connect, sync every
//! conversation, send what the outbox holds, and say what to show — read
//! from this device's own copy after syncing, through the same notification
//! policy ([`crate::notify`]) as a running app. The shell calls it from the
//! platform's push callback (Android's `FirebaseMessagingService` or
//! UnifiedPush receiver, iOS's Notification Service Extension or PushKit)
//! and shows [`CaughtUp::notices`] and [`CaughtUp::ringing`].

use crate::notify::{self, Attention, NotifySettings};
use crate::types::{CallPhase, CallView, ChatMessage, ClientEvent};
use crate::{Client, Error, Result};
use confab_protocol::{CallId, ConversationId, PushTarget, RequestBody, Wake, WakeKind};
use serde::{Deserialize, Serialize};
use specta::Type;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// One system notification to show, as the policy decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct Notice {
    pub conversation: ConversationId,
    /// The sender, or "sender in group".
    pub title: String,
    /// The message ([`notify::body`]), or a summary of several
    /// ([`notify::missed_summary`]).
    pub body: String,
    /// Play the notification sound.
    pub sound: bool,
}

/// What a wake-up's catch-up did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct CaughtUp {
    /// Synced with the server (false: the budget ran out first, or the
    /// server could not be reached; the next wake-up or start finishes).
    pub synced: bool,
    /// Own messages still waiting to go out (0: the outbox is flushed).
    pub unsent: u32,
    /// The notifications to show, one per message or per conversation
    /// caught up on.
    pub notices: Vec<Notice>,
    /// A call ringing for this device when the catch-up returned: the
    /// shell reports it (CallKit, a full-screen intent) and the client
    /// keeps running for it.
    pub ringing: Option<CallView>,
}

/// How often the sync state and the outbox are looked at while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How long after syncing a call's wake-up waits for the call's frame. The
/// server sends a ringing call right after `welcome`, before any sync reply,
/// so by then it has come unless the call is already over (its entry in
/// the log, just synced, says how it ended).
const CALL_GRACE: Duration = Duration::from_secs(1);

impl Client {
    /// Registers how this device session is woken while it has no socket
    /// open (the token or endpoint the platform handed the app), replacing
    /// the one it had. Call it whenever the platform hands a new one.
    pub async fn set_push(&self, target: PushTarget) -> Result<()> {
        target.check_shape().map_err(|why| Error::Invalid(why.to_owned()))?;
        self.request(RequestBody::SetPush { target }).await.map(drop)
    }

    /// Stops waking this device session.
    pub async fn clear_push(&self) -> Result<()> {
        self.request(RequestBody::ClearPush {}).await.map(drop)
    }

    /// The notification for a client event, if the policy allows one:
    /// a live message, or the summary of what arrived while away. The one
    /// place that turns events into notifications, for the running app and
    /// for wake-ups alike.
    pub async fn notice(
        &self,
        event: &ClientEvent,
        attention: &Attention,
        settings: &NotifySettings,
    ) -> Option<Notice> {
        let me = self.cache.session().await.ok().flatten()?.user;
        let (message, body) = match event {
            ClientEvent::MessageAdded { message, live: true } => (message, notify::body(message)),
            ClientEvent::MissedMessages { latest, count, senders, .. } => {
                (latest, notify::missed_summary(*count, senders))
            }
            _ => return None,
        };
        let decision = notify::decide(me, message, attention, settings);
        if !decision.notify {
            return None;
        }
        Some(Notice {
            conversation: message.conversation,
            title: self.notice_title(message).await,
            body,
            sound: decision.sound,
        })
    }

    async fn notice_title(&self, message: &ChatMessage) -> String {
        match self.conversation(message.conversation).await.ok().flatten() {
            Some(c) if c.kind == confab_protocol::ConvKind::Group => format!("{} in {}", message.sender_name, c.title),
            _ => message.sender_name.clone(),
        }
    }

    /// Catches up after a push woke the app, within `budget` (what the OS
    /// gives a background task: about 20 s on Android, 30 s in an iOS
    /// Notification Service Extension).
    ///
    /// Starts the client if it is not running (a cold start from the push
    /// callback), waits until it has synced every conversation and the
    /// outbox is empty, and returns the notifications to show, decided by
    /// the notification policy for an app in the background. For a call's
    /// wake-up it also waits, within the budget, until that call rings (or
    /// turns out to have ended). Never fails for lack of time or network:
    /// [`CaughtUp::synced`] and [`CaughtUp::unsent`] say how far it got.
    ///
    /// The client keeps running afterwards (a ringing call needs it); the
    /// shell calls [`Client::stop`] when the OS takes the time back.
    pub async fn catch_up(&self, budget: Duration, wake: Option<&Wake>, settings: &NotifySettings) -> Result<CaughtUp> {
        let deadline = Instant::now() + budget;
        // Subscribed before starting, so nothing the start produces is missed.
        let mut events = self.subscribe();
        self.start().await?;
        let inner = self.inner().await?;
        let call = wake.filter(|w| w.kind == WakeKind::Call).and_then(|w| w.call);
        let mut out = CaughtUp::default();
        let mut call_seen = call.is_none();
        let mut synced_at = None;
        let mut next_look = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_look {
                out.unsent = u32::try_from(self.outbox_len().await?).unwrap_or(u32::MAX);
                // Read from the client's state, not from a SyncCompleted
                // event: a client already running and synced gets none.
                out.synced = inner.is_synced();
                if out.synced {
                    synced_at.get_or_insert(now);
                }
                next_look = now + POLL;
            }
            let call_done = call_seen || synced_at.is_some_and(|at| now >= at + CALL_GRACE);
            if (out.synced && out.unsent == 0 && call_done) || now >= deadline {
                // What the sync reported before it finished is queued here.
                while let Ok(event) = events.try_recv() {
                    self.take(&event, call, &mut out, settings).await;
                }
                break;
            }
            match tokio::time::timeout_at(deadline.min(next_look), events.recv()).await {
                Ok(Ok(event)) => call_seen |= self.take(&event, call, &mut out, settings).await,
                // Too many events to keep up with: what they said is in the
                // cache, and the summaries come after them.
                Ok(Err(RecvError::Lagged(n))) => tracing::debug!(n, "catch-up lagged behind the event stream"),
                Ok(Err(RecvError::Closed)) => break,
                Err(_) => {}
            }
        }
        out.unsent = u32::try_from(self.outbox_len().await?).unwrap_or(u32::MAX);
        out.synced = inner.is_synced();
        Ok(out)
    }

    /// Notes one event of a catch-up in `out`; whether it was `call`'s.
    async fn take(
        &self,
        event: &ClientEvent,
        call: Option<CallId>,
        out: &mut CaughtUp,
        settings: &NotifySettings,
    ) -> bool {
        if let ClientEvent::Call { call: view } = event {
            let ringing_here = view.phase == CallPhase::Ringing && !view.outgoing;
            if ringing_here {
                out.ringing = Some(view.clone());
            } else if out.ringing.as_ref().is_some_and(|r| r.call == view.call) {
                out.ringing = None;
            }
            return call == Some(view.call);
        }
        if let Some(notice) = self.notice(event, &Attention::default(), settings).await {
            // A newer summary of a conversation replaces the older one.
            if matches!(event, ClientEvent::MissedMessages { .. }) {
                out.notices.retain(|n| n.conversation != notice.conversation);
            }
            out.notices.push(notice);
        }
        false
    }
}
