//! 1:1 call signaling: the server owns each call's state and timeouts and
//! relays WebRTC signaling between the call's two devices only.
//!
//! - **Invite** (a member of a direct conversation calls the other): every
//!   device of the callee rings. Either side already in a call: `busy`.
//! - **Glare**: when both call each other at once, the call with the lesser
//!   id survives; the other ends as `superseded` for both, without a log
//!   entry. Deterministic, no round trip.
//! - **Accept**: the first of the callee's devices wins; the others get
//!   `answered_elsewhere`. **Decline**: every device stops ringing.
//!   **Hangup**: a cancel while ringing, a hangup once answered.
//! - Nobody answering within the ring timeout makes a **missed** call. A
//!   caller that disconnects while it rings cancels it.
//! - **Rejoin**: a device that disconnects from an answered call keeps its
//!   place for the rejoin grace, because media runs peer to peer and often
//!   outlives a signaling hiccup. The same device session (not another
//!   device of the account) takes it back with `call_rejoin` after it
//!   reconnects; otherwise the call ends as `connection_lost`.
//!
//! Signaling frames are ephemeral and never enter the ordered log; only the
//! outcome does, committed before anyone is told (`EventBody::Call`).

use crate::error::{ApiError, Result};
use crate::service::{frame, Caller, Service};
use confab_protocol::{
    CallEnd, CallId, CallOutcome, CallSignal, CallUpdate, ConvKind, ConversationId, ErrorCode, EventBody, Reply,
    ServerFrame, UserId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One side's device in a call.
struct Seat {
    /// Its connection now (a rejoin moves the seat to a new one).
    conn: u64,
    /// Its device session: only that device may rejoin.
    session: Uuid,
    /// Since when it has been disconnected (answered calls).
    gone: Option<Instant>,
}

impl Seat {
    fn of(caller: &Caller) -> Seat {
        Seat { conn: caller.conn, session: caller.session, gone: None }
    }
}

struct Call {
    conversation: ConversationId,
    video: bool,
    caller: UserId,
    caller_seat: Seat,
    callee: UserId,
    /// The callee's device that took the call, once answered.
    callee_seat: Option<Seat>,
    rang_at: Instant,
    answered_at: Option<Instant>,
}

impl Call {
    fn involves(&self, user: UserId) -> bool {
        self.caller == user || self.callee == user
    }

    /// When the first of its devices went away, if one is away.
    fn gone_since(&self) -> Option<Instant> {
        self.caller_seat.gone.into_iter().chain(self.callee_seat.as_ref().and_then(|s| s.gone)).min()
    }
}

pub struct Calls {
    calls: Mutex<HashMap<CallId, Call>>,
    ring_timeout: Duration,
    rejoin_grace: Duration,
}

fn lock(m: &Mutex<HashMap<CallId, Call>>) -> std::sync::MutexGuard<'_, HashMap<CallId, Call>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn no_call() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such call for you")
}

impl Calls {
    pub fn new(ring_timeout: Duration, rejoin_grace: Duration) -> Calls {
        Calls { calls: Mutex::new(HashMap::new()), ring_timeout, rejoin_grace }
    }
}

/// What ending a call must do: tell devices, and maybe log the outcome.
struct Ended {
    call: CallId,
    conversation: ConversationId,
    caller: UserId,
    video: bool,
    /// (user, only this connection or all of theirs, reason)
    notices: Vec<(UserId, Option<u64>, CallEnd)>,
    outcome: Option<CallOutcome>,
    peer_of: [(UserId, UserId); 2],
}

impl Service {
    fn call_frame(
        &self,
        call: CallId,
        conversation: ConversationId,
        peer: UserId,
        update: CallUpdate,
    ) -> Option<Arc<str>> {
        frame(&ServerFrame::Call { call, conversation, peer, update }).ok()
    }

    /// Tells one device (`Some(conn)`) or all of a user's devices.
    fn tell(
        &self,
        user: UserId,
        conn: Option<u64>,
        call: CallId,
        conversation: ConversationId,
        peer: UserId,
        update: CallUpdate,
    ) {
        let Some(frame) = self.call_frame(call, conversation, peer, update) else { return };
        match conn {
            Some(conn) => self.hub.publish_conn(user, conn, frame),
            None => self.hub.publish(&[user], frame),
        }
    }

    pub(crate) async fn call_invite(
        &self,
        caller: &Caller,
        conversation: ConversationId,
        call: CallId,
        video: bool,
    ) -> Result<Reply> {
        let membership = self.member(conversation, caller.user).await?;
        if membership.kind != ConvKind::Direct {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "calls are between the two members of a direct conversation",
            ));
        }
        let callee = self
            .store
            .member_ids(conversation)
            .await?
            .into_iter()
            .find(|u| *u != caller.user)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "nobody to call"))?;
        let superseded = {
            let mut calls = lock(&self.calls.calls);
            if calls.contains_key(&call) {
                return Err(ApiError::new(ErrorCode::InvalidRequest, "that call id is in use"));
            }
            // Glare: the callee is ringing us in this conversation right now.
            let glare = calls
                .iter()
                .find(|(_, c)| c.conversation == conversation && c.caller == callee && c.answered_at.is_none())
                .map(|(id, _)| *id);
            let superseded = match glare {
                Some(theirs) if call < theirs => calls.remove(&theirs).map(|c| (theirs, c)),
                Some(_) => return Err(ApiError::new(ErrorCode::Busy, "they are calling you: answer their call")),
                None => None,
            };
            if calls.values().any(|c| c.involves(caller.user) || c.involves(callee)) {
                return Err(ErrorCode::Busy.into());
            }
            calls.insert(
                call,
                Call {
                    conversation,
                    video,
                    caller: caller.user,
                    caller_seat: Seat::of(caller),
                    callee,
                    callee_seat: None,
                    rang_at: Instant::now(),
                    answered_at: None,
                },
            );
            superseded
        };
        if let Some((id, old)) = superseded {
            self.tell(
                old.caller,
                None,
                id,
                conversation,
                old.callee,
                CallUpdate::Ended { reason: CallEnd::Superseded },
            );
            self.tell(
                old.callee,
                None,
                id,
                conversation,
                old.caller,
                CallUpdate::Ended { reason: CallEnd::Superseded },
            );
        }
        self.tell(callee, None, call, conversation, caller.user, CallUpdate::Incoming { video });
        // Devices that are away ring once a push has woken them (they get
        // the ringing frame when they connect).
        self.push.call(callee, call, conversation, video);
        Ok(Reply::Call {
            call,
            peer: callee,
            ice_servers: self.ice.servers_for(caller.user, std::time::SystemTime::now()),
        })
    }

    pub(crate) fn call_accept(&self, caller: &Caller, call: CallId) -> Result<Reply> {
        let (conversation, peer) = {
            let mut calls = lock(&self.calls.calls);
            let c = calls.get_mut(&call).filter(|c| c.callee == caller.user).ok_or_else(no_call)?;
            if c.answered_at.is_some() {
                return Err(ApiError::new(ErrorCode::NotFound, "the call was answered on another device"));
            }
            c.answered_at = Some(Instant::now());
            c.callee_seat = Some(Seat::of(caller));
            (c.conversation, c.caller)
        };
        self.tell(peer, None, call, conversation, caller.user, CallUpdate::Accepted);
        if let Some(f) = self.call_frame(call, conversation, peer, CallUpdate::AnsweredElsewhere) {
            self.hub.publish_user_except(caller.user, caller.conn, f);
        }
        Ok(Reply::Call { call, peer, ice_servers: self.ice.servers_for(caller.user, std::time::SystemTime::now()) })
    }

    pub(crate) fn call_signal(&self, caller: &Caller, call: CallId, signal: CallSignal) -> Result<Reply> {
        let (to, conn, conversation) = {
            let calls = lock(&self.calls.calls);
            // Nobody outside the call learns that it exists.
            let c = calls.get(&call).filter(|c| c.involves(caller.user)).ok_or_else(no_call)?;
            let callee_conn = c
                .callee_seat
                .as_ref()
                .map(|s| s.conn)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "the call is not answered yet"))?;
            // Only the two devices in the call may signal.
            if caller.user == c.caller && caller.conn == c.caller_seat.conn {
                (c.callee, callee_conn, c.conversation)
            } else if caller.user == c.callee && caller.conn == callee_conn {
                (c.caller, c.caller_seat.conn, c.conversation)
            } else {
                return Err(no_call());
            }
        };
        self.tell(to, Some(conn), call, conversation, caller.user, CallUpdate::Signal { signal });
        Ok(Reply::Done { pos: None })
    }

    /// The device that was in the call takes its place again, on the
    /// connection it has now.
    pub(crate) fn call_rejoin(&self, caller: &Caller, call: CallId) -> Result<Reply> {
        let peer = {
            let mut calls = lock(&self.calls.calls);
            let c = calls.get_mut(&call).filter(|c| c.answered_at.is_some()).ok_or_else(no_call)?;
            let (seat, peer) = if c.caller == caller.user {
                (Some(&mut c.caller_seat), c.callee)
            } else if c.callee == caller.user {
                (c.callee_seat.as_mut(), c.caller)
            } else {
                (None, c.caller)
            };
            // Another device of the account, or someone else entirely: no.
            let seat = seat.filter(|s| s.session == caller.session).ok_or_else(no_call)?;
            *seat = Seat::of(caller);
            peer
        };
        Ok(Reply::Call { call, peer, ice_servers: self.ice.servers_for(caller.user, std::time::SystemTime::now()) })
    }

    pub(crate) async fn call_decline(&self, caller: &Caller, call: CallId) -> Result<Reply> {
        let ended = {
            let mut calls = lock(&self.calls.calls);
            match calls.get(&call) {
                Some(c) if c.callee == caller.user && c.answered_at.is_none() => {}
                _ => return Err(no_call()),
            }
            let c = calls.remove(&call).ok_or_else(no_call)?;
            Ended {
                call,
                conversation: c.conversation,
                caller: c.caller,
                video: c.video,
                notices: vec![(c.caller, None, CallEnd::Declined), (c.callee, None, CallEnd::Declined)],
                outcome: Some(CallOutcome::Declined),
                peer_of: [(c.caller, c.callee), (c.callee, c.caller)],
            }
        };
        self.finish(ended).await?;
        Ok(Reply::Done { pos: None })
    }

    pub(crate) async fn call_hangup(&self, caller: &Caller, call: CallId) -> Result<Reply> {
        let ended = {
            let mut calls = lock(&self.calls.calls);
            match calls.get(&call) {
                Some(c) if c.involves(caller.user) => {}
                _ => return Err(no_call()),
            }
            let c = calls.remove(&call).ok_or_else(no_call)?;
            end_of(call, c, false)
        };
        self.finish(ended).await?;
        Ok(Reply::Done { pos: None })
    }

    /// `incoming` frames for the calls ringing for `user` now, for a
    /// device of theirs that just connected.
    pub(crate) fn calls_ringing_for(&self, user: UserId) -> Vec<Arc<str>> {
        let ringing: Vec<(CallId, ConversationId, UserId, bool)> = lock(&self.calls.calls)
            .iter()
            .filter(|(_, c)| c.callee == user && c.answered_at.is_none())
            .map(|(id, c)| (*id, c.conversation, c.caller, c.video))
            .collect();
        ringing
            .into_iter()
            .filter_map(|(call, conversation, caller, video)| {
                self.call_frame(call, conversation, caller, CallUpdate::Incoming { video })
            })
            .collect()
    }

    /// Ends calls that rang too long (missed) and calls whose device did
    /// not come back within the rejoin grace (connection lost).
    pub async fn expire_calls(&self) {
        let expired: Vec<Ended> = {
            let mut calls = lock(&self.calls.calls);
            let late: Vec<CallId> = calls
                .iter()
                .filter(|(_, c)| match c.answered_at {
                    None => c.rang_at.elapsed() >= self.calls.ring_timeout,
                    Some(_) => c.gone_since().is_some_and(|t| t.elapsed() >= self.calls.rejoin_grace),
                })
                .map(|(id, _)| *id)
                .collect();
            late.into_iter().filter_map(|id| calls.remove(&id).map(|c| end_of(id, c, true))).collect()
        };
        for ended in expired {
            if let Err(e) = self.finish(ended).await {
                tracing::warn!(%e, "cannot log a missed call");
            }
        }
    }

    /// A connection ended: a call that rang from it is cancelled; in an
    /// answered call its side waits for the device to rejoin.
    pub async fn connection_gone(&self, user: UserId, conn: u64) {
        let gone: Vec<Ended> = {
            let mut calls = lock(&self.calls.calls);
            let now = Instant::now();
            let mut cancelled = Vec::new();
            for (id, c) in calls.iter_mut() {
                let answered = c.answered_at.is_some();
                if c.caller == user && c.caller_seat.conn == conn {
                    if answered {
                        c.caller_seat.gone.get_or_insert(now);
                    } else {
                        cancelled.push(*id);
                    }
                } else if let Some(seat) = c.callee_seat.as_mut().filter(|s| c.callee == user && s.conn == conn) {
                    seat.gone.get_or_insert(now);
                }
            }
            cancelled.into_iter().filter_map(|id| calls.remove(&id).map(|c| end_of(id, c, false))).collect()
        };
        for ended in gone {
            if let Err(e) = self.finish(ended).await {
                tracing::warn!(%e, "cannot log a call's end");
            }
        }
    }

    /// Logs the outcome (committed first), then tells the devices.
    async fn finish(&self, ended: Ended) -> Result<()> {
        if let Some(outcome) = ended.outcome {
            let body = EventBody::Call { seq: 0, call: ended.call, video: ended.video, outcome };
            self.log_call(ended.conversation, ended.caller, body).await?;
        }
        for (user, conn, reason) in ended.notices {
            let peer = ended.peer_of.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap_or(user);
            self.tell(user, conn, ended.call, ended.conversation, peer, CallUpdate::Ended { reason });
        }
        Ok(())
    }
}

/// How a call that is removed ends: missed (timed out while it rang),
/// cancelled (the caller gave up while it rang), completed (answered, then
/// hung up), or completed with its connection lost (a device stayed away
/// past the rejoin grace; the call lasted until it left).
fn end_of(call: CallId, c: Call, timed_out: bool) -> Ended {
    let completed = |at: Instant, until: Instant| CallOutcome::Completed {
        duration_ms: until.saturating_duration_since(at).as_millis() as i64,
    };
    let (reason, outcome) = match (c.answered_at, c.gone_since()) {
        (Some(at), Some(gone)) if timed_out => (CallEnd::ConnectionLost, completed(at, gone)),
        (Some(at), _) => (CallEnd::HungUp, completed(at, Instant::now())),
        (None, _) if timed_out => (CallEnd::Missed, CallOutcome::Missed),
        (None, _) => (CallEnd::Cancelled, CallOutcome::Cancelled),
    };
    // Once answered (the callee has a seat) only the two devices in the
    // call are told; before, every device of the callee was ringing.
    let callee_conn = c.callee_seat.as_ref().map(|s| s.conn);
    Ended {
        call,
        conversation: c.conversation,
        caller: c.caller,
        video: c.video,
        notices: vec![(c.caller, None, reason), (c.callee, callee_conn, reason)],
        outcome: Some(outcome),
        peer_of: [(c.caller, c.callee), (c.callee, c.caller)],
    }
}
