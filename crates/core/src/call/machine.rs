//! One device's view of a 1:1 call, as a pure state machine: what the user
//! does, what the server says and what the media engine reports go in;
//! the next state and the actions to take come out. No I/O, no clock (the
//! caller passes the time), so every transition is testable.
//!
//! The server is the authority on who takes a call and on glare (the
//! lesser call id survives, see `docs/protocol.md`); this machine follows
//! the same rule locally so that both sides agree without a round trip.

use confab_protocol::{CallEnd, CallId, CallUpdate, Millis};

/// How long media may be lost before the call is given up.
pub const RECONNECT_GRACE_MS: Millis = 15_000;
/// How long an answered call may take to get media flowing.
pub const CONNECT_TIMEOUT_MS: Millis = RECONNECT_GRACE_MS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    Idle,
    /// We called; the other side's devices ring.
    Outgoing {
        call: CallId,
        video: bool,
    },
    /// They call; this device rings.
    Incoming {
        call: CallId,
        video: bool,
    },
    /// Answered; media is being set up. `offerer`: this side makes the
    /// WebRTC offer (the caller does).
    Connecting {
        call: CallId,
        video: bool,
        offerer: bool,
        answered_at: Millis,
    },
    Active {
        call: CallId,
        video: bool,
        since: Millis,
    },
    /// Media was lost; an ICE restart is under way.
    Reconnecting {
        call: CallId,
        video: bool,
        since: Millis,
        lost_at: Millis,
    },
    Ended {
        call: CallId,
        end: Ending,
    },
}

/// Why a call ended, from this device's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The server ended it (declined, cancelled, missed, hung up, superseded).
    Server(CallEnd),
    /// Another of our devices took or declined it.
    AnsweredElsewhere,
    DeclinedElsewhere,
    /// The other side is in a call.
    Busy,
    /// Media could not be restored in time.
    ConnectionLost,
    /// We hung up, declined or cancelled here.
    Local,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CallInput {
    /// The user calls.
    Dial {
        call: CallId,
        video: bool,
    },
    Accept,
    Decline,
    HangUp,
    /// A `call` frame from the server.
    Server {
        call: CallId,
        update: CallUpdate,
    },
    /// The server refused our invite with `busy`.
    Busy {
        call: CallId,
    },
    MediaConnected,
    MediaLost,
    /// Time passes (checked against the reconnect grace).
    Tick,
    /// The link to the server dropped. A ringing call is over for this
    /// device (the server cancels ours, and rings again for theirs when we
    /// are back); an answered one goes on, since media runs peer to peer
    /// and the server keeps our place for its rejoin grace.
    LinkDropped,
    /// The link is back.
    LinkRestored,
    /// The server gave this device its place in the call back.
    Rejoined {
        call: CallId,
    },
    /// The server has no place for us: the call ended while we were away.
    RejoinRefused {
        call: CallId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendInvite {
        call: CallId,
        video: bool,
    },
    SendAccept {
        call: CallId,
    },
    SendDecline {
        call: CallId,
    },
    SendHangup {
        call: CallId,
    },
    Ring,
    StopRinging,
    /// Start WebRTC: make the offer (caller) or wait for it (callee).
    StartMedia {
        offerer: bool,
        video: bool,
    },
    RestartIce,
    StopMedia,
    /// Take our place in the call again after the link came back.
    SendRejoin {
        call: CallId,
    },
}

impl CallState {
    /// The call this state is about (`None` when idle).
    pub fn call(&self) -> Option<CallId> {
        call_of(self)
    }
}

fn call_of(state: &CallState) -> Option<CallId> {
    match state {
        CallState::Idle => None,
        CallState::Outgoing { call, .. }
        | CallState::Incoming { call, .. }
        | CallState::Connecting { call, .. }
        | CallState::Active { call, .. }
        | CallState::Reconnecting { call, .. }
        | CallState::Ended { call, .. } => Some(*call),
    }
}

/// The next state and what to do, for `input` at time `now`.
pub fn step(state: &CallState, input: &CallInput, now: Millis) -> (CallState, Vec<Action>) {
    use Action::*;
    use CallInput as In;
    use CallState as S;
    let same = (state.clone(), Vec::new());
    let ended = |call: CallId, end: Ending, actions: Vec<Action>| (S::Ended { call, end }, actions);
    // Updates about another call than ours.
    if let In::Server { call, .. } | In::Busy { call } | In::Rejoined { call } | In::RejoinRefused { call } = input {
        if call_of(state) != Some(*call) {
            return match (state, input) {
                // Something rings while we are idle (or done with a call).
                (S::Idle | S::Ended { .. }, In::Server { call, update: CallUpdate::Incoming { video } }) => {
                    (S::Incoming { call: *call, video: *video }, vec![Ring])
                }
                // Glare: they called us while our call was on its way. The
                // lesser id survives: theirs, so ring for it (the server
                // answers ours with `busy`); ours, so ignore theirs (the
                // server supersedes it).
                (S::Outgoing { call: ours, .. }, In::Server { call, update: CallUpdate::Incoming { video } })
                    if call < ours =>
                {
                    (S::Incoming { call: *call, video: *video }, vec![Ring])
                }
                _ => same,
            };
        }
    }
    match (state, input) {
        (S::Idle | S::Ended { .. }, In::Dial { call, video }) => {
            (S::Outgoing { call: *call, video: *video }, vec![SendInvite { call: *call, video: *video }])
        }
        (S::Outgoing { call, .. }, In::HangUp) => ended(*call, Ending::Local, vec![SendHangup { call: *call }]),
        (S::Outgoing { call, .. }, In::Busy { .. }) => ended(*call, Ending::Busy, vec![]),
        (S::Outgoing { call, video }, In::Server { update: CallUpdate::Accepted, .. }) => (
            S::Connecting { call: *call, video: *video, offerer: true, answered_at: now },
            vec![StartMedia { offerer: true, video: *video }],
        ),
        (S::Incoming { call, video }, In::Accept) => (
            S::Connecting { call: *call, video: *video, offerer: false, answered_at: now },
            vec![StopRinging, SendAccept { call: *call }, StartMedia { offerer: false, video: *video }],
        ),
        (S::Incoming { call, .. }, In::Decline | In::HangUp) => {
            ended(*call, Ending::Local, vec![StopRinging, SendDecline { call: *call }])
        }
        (S::Incoming { call, .. }, In::Server { update: CallUpdate::AnsweredElsewhere, .. }) => {
            ended(*call, Ending::AnsweredElsewhere, vec![StopRinging])
        }
        (S::Incoming { call, .. }, In::Server { update: CallUpdate::DeclinedElsewhere, .. }) => {
            ended(*call, Ending::DeclinedElsewhere, vec![StopRinging])
        }
        (S::Connecting { call, video, .. }, In::MediaConnected) => {
            (S::Active { call: *call, video: *video, since: now }, vec![])
        }
        (S::Active { call, video, since }, In::MediaLost) => {
            (S::Reconnecting { call: *call, video: *video, since: *since, lost_at: now }, vec![RestartIce])
        }
        (S::Reconnecting { call, video, since, .. }, In::MediaConnected) => {
            (S::Active { call: *call, video: *video, since: *since }, vec![])
        }
        (S::Connecting { call, answered_at, .. }, In::Tick) if now - answered_at >= CONNECT_TIMEOUT_MS => {
            ended(*call, Ending::ConnectionLost, vec![StopMedia, SendHangup { call: *call }])
        }
        (S::Reconnecting { call, lost_at, .. }, In::Tick) if now - lost_at >= RECONNECT_GRACE_MS => {
            ended(*call, Ending::ConnectionLost, vec![StopMedia, SendHangup { call: *call }])
        }
        (S::Connecting { call, .. } | S::Active { call, .. } | S::Reconnecting { call, .. }, In::HangUp) => {
            ended(*call, Ending::Local, vec![StopMedia, SendHangup { call: *call }])
        }
        // The server ended it: stop whatever this state has running.
        (S::Outgoing { call, .. }, In::Server { update: CallUpdate::Ended { reason }, .. }) => {
            ended(*call, Ending::Server(*reason), vec![])
        }
        (S::Incoming { call, .. }, In::Server { update: CallUpdate::Ended { reason }, .. }) => {
            ended(*call, Ending::Server(*reason), vec![StopRinging])
        }
        (
            S::Connecting { call, .. } | S::Active { call, .. } | S::Reconnecting { call, .. },
            In::Server { update: CallUpdate::Ended { reason }, .. },
        ) => ended(*call, Ending::Server(*reason), vec![StopMedia]),
        // Without the link a ringing call is over for this device.
        (S::Outgoing { call, .. }, In::LinkDropped) => ended(*call, Ending::ConnectionLost, vec![]),
        (S::Incoming { call, .. }, In::LinkDropped) => ended(*call, Ending::ConnectionLost, vec![StopRinging]),
        // An answered call goes on; once the link is back, rejoin it.
        (S::Connecting { call, .. } | S::Active { call, .. } | S::Reconnecting { call, .. }, In::LinkRestored) => {
            (state.clone(), vec![SendRejoin { call: *call }])
        }
        // Signals sent while away may be lost: restart ICE unless media
        // is flowing.
        (S::Connecting { .. } | S::Reconnecting { .. }, In::Rejoined { .. }) => (state.clone(), vec![RestartIce]),
        (
            S::Connecting { call, .. } | S::Active { call, .. } | S::Reconnecting { call, .. },
            In::RejoinRefused { .. },
        ) => ended(*call, Ending::ConnectionLost, vec![StopMedia]),
        // Everything else changes nothing: a second Dial during a call, an
        // Accept with nothing ringing, signals (the engine takes those), …
        _ => same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ids() -> (CallId, CallId) {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// Every state, for a call `c`.
    fn states(c: CallId) -> Vec<CallState> {
        vec![
            CallState::Idle,
            CallState::Outgoing { call: c, video: false },
            CallState::Incoming { call: c, video: true },
            CallState::Connecting { call: c, video: false, offerer: true, answered_at: 0 },
            CallState::Active { call: c, video: false, since: 10 },
            CallState::Reconnecting { call: c, video: false, since: 10, lost_at: 100 },
            CallState::Ended { call: c, end: Ending::Local },
        ]
    }

    /// Every input, about call `c` (and `other` for foreign updates).
    fn inputs(c: CallId, other: CallId) -> Vec<CallInput> {
        let server = |call, update| CallInput::Server { call, update };
        vec![
            CallInput::Dial { call: other, video: false },
            CallInput::Accept,
            CallInput::Decline,
            CallInput::HangUp,
            server(c, CallUpdate::Incoming { video: false }),
            server(c, CallUpdate::Accepted),
            server(c, CallUpdate::AnsweredElsewhere),
            server(c, CallUpdate::DeclinedElsewhere),
            server(c, CallUpdate::Ended { reason: CallEnd::HungUp }),
            server(c, CallUpdate::Ended { reason: CallEnd::Missed }),
            server(c, CallUpdate::Signal { signal: confab_protocol::CallSignal::Offer { sdp: "v=0".into() } }),
            server(other, CallUpdate::Incoming { video: false }),
            server(other, CallUpdate::Ended { reason: CallEnd::Superseded }),
            CallInput::Busy { call: c },
            CallInput::MediaConnected,
            CallInput::MediaLost,
            CallInput::Tick,
            CallInput::LinkDropped,
            CallInput::LinkRestored,
            CallInput::Rejoined { call: c },
            CallInput::RejoinRefused { call: c },
            CallInput::RejoinRefused { call: other },
        ]
    }

    fn active_media(s: &CallState) -> bool {
        matches!(s, CallState::Connecting { .. } | CallState::Active { .. } | CallState::Reconnecting { .. })
    }

    fn rings(s: &CallState) -> bool {
        matches!(s, CallState::Incoming { .. })
    }

    /// Every state × every input, at two times (inside and past the
    /// reconnect grace): each transition keeps the invariants below, and
    /// the expected ones happen.
    #[test]
    fn every_state_and_input_keeps_ringing_and_media_consistent() {
        let (c, later) = ids();
        let mut checked = 0;
        for state in states(c) {
            for input in inputs(c, later) {
                for now in [200, 100 + RECONNECT_GRACE_MS] {
                    let (next, actions) = step(&state, &input, now);
                    checked += 1;
                    let what = format!("{state:?} + {input:?} at {now} -> {next:?} {actions:?}");
                    // Ringing starts only when entering Incoming, stops
                    // exactly when leaving it.
                    let ring = actions.contains(&Action::Ring);
                    let stop = actions.contains(&Action::StopRinging);
                    assert_eq!(
                        ring,
                        !rings(&state) && rings(&next) || (rings(&next) && call_of(&next) != call_of(&state)),
                        "{what}"
                    );
                    assert_eq!(stop, rings(&state) && !rings(&next), "{what}");
                    // Media starts only when answering, stops when a call
                    // with media ends.
                    let start = actions.iter().any(|a| matches!(a, Action::StartMedia { .. }));
                    assert_eq!(start, !active_media(&state) && active_media(&next), "{what}");
                    let stop_media = actions.contains(&Action::StopMedia);
                    assert_eq!(stop_media, active_media(&state) && !active_media(&next), "{what}");
                    // A call never silently changes identity mid-call.
                    if active_media(&state) {
                        assert_eq!(call_of(&next), call_of(&state), "{what}");
                    }
                    // A signaling outage alone never ends an answered call,
                    // and its end makes an answered call rejoin.
                    if active_media(&state) && input == CallInput::LinkDropped {
                        assert_eq!(next, state, "{what}");
                    }
                    let rejoin = actions.iter().any(|a| matches!(a, Action::SendRejoin { .. }));
                    assert_eq!(rejoin, active_media(&state) && input == CallInput::LinkRestored, "{what}");
                    // Whatever ends locally tells the server.
                    if let CallState::Ended { end: Ending::Local, call } = next {
                        if !matches!(state, CallState::Ended { .. }) {
                            assert!(
                                actions.iter().any(|a| matches!(a, Action::SendHangup { call: x } | Action::SendDecline { call: x } if *x == call)),
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 22 * 2);
    }

    #[test]
    fn a_call_from_dial_to_hangup() {
        let (c, _) = ids();
        let (s, a) = step(&CallState::Idle, &CallInput::Dial { call: c, video: true }, 0);
        assert_eq!(a, vec![Action::SendInvite { call: c, video: true }]);
        let (s, a) = step(&s, &CallInput::Server { call: c, update: CallUpdate::Accepted }, 5);
        assert_eq!(a, vec![Action::StartMedia { offerer: true, video: true }]);
        let (s, _) = step(&s, &CallInput::MediaConnected, 10);
        assert_eq!(s, CallState::Active { call: c, video: true, since: 10 });
        // Media lost, recovered within the grace.
        let (s, a) = step(&s, &CallInput::MediaLost, 20);
        assert_eq!(a, vec![Action::RestartIce]);
        let (s, _) = step(&s, &CallInput::Tick, 20 + RECONNECT_GRACE_MS - 1);
        assert!(matches!(s, CallState::Reconnecting { .. }));
        let (s, _) = step(&s, &CallInput::MediaConnected, 30);
        assert_eq!(s, CallState::Active { call: c, video: true, since: 10 });
        // Lost for good.
        let (s, _) = step(&s, &CallInput::MediaLost, 40);
        let (s, a) = step(&s, &CallInput::Tick, 40 + RECONNECT_GRACE_MS);
        assert_eq!(s, CallState::Ended { call: c, end: Ending::ConnectionLost });
        assert_eq!(a, vec![Action::StopMedia, Action::SendHangup { call: c }]);
    }

    #[test]
    fn an_answered_call_outlives_a_signaling_outage_and_rejoins() {
        let (c, other) = ids();
        let active = CallState::Active { call: c, video: false, since: 10 };
        let (s, a) = step(&active, &CallInput::LinkDropped, 20);
        assert_eq!((&s, a), (&active, vec![]));
        let (s, a) = step(&s, &CallInput::LinkRestored, 30);
        assert_eq!((&s, a), (&active, vec![Action::SendRejoin { call: c }]));
        // Media flowed all along: nothing to restart.
        let (s, a) = step(&s, &CallInput::Rejoined { call: c }, 31);
        assert_eq!((&s, a), (&active, vec![]));
        // Media was lost meanwhile: the offer made while away may be gone.
        let lost = CallState::Reconnecting { call: c, video: false, since: 10, lost_at: 25 };
        assert_eq!(step(&lost, &CallInput::Rejoined { call: c }, 31).1, vec![Action::RestartIce]);
        // The call ended while we were away.
        let (s, a) = step(&lost, &CallInput::RejoinRefused { call: c }, 31);
        assert_eq!((s, a), (CallState::Ended { call: c, end: Ending::ConnectionLost }, vec![Action::StopMedia]));
        // A stale refusal about another call changes nothing.
        assert_eq!(step(&active, &CallInput::RejoinRefused { call: other }, 31), (active.clone(), vec![]));
        // A ringing call is over without the link.
        let ringing = CallState::Incoming { call: c, video: false };
        let (s, a) = step(&ringing, &CallInput::LinkDropped, 20);
        assert_eq!((s, a), (CallState::Ended { call: c, end: Ending::ConnectionLost }, vec![Action::StopRinging]));
    }

    #[test]
    fn glare_keeps_the_lesser_call_id_on_both_sides() {
        let (lesser, greater) = ids();
        // We dialled the greater id; theirs (lesser) arrives: ring for it.
        let ours = CallState::Outgoing { call: greater, video: false };
        let (s, a) = step(&ours, &CallInput::Server { call: lesser, update: CallUpdate::Incoming { video: false } }, 0);
        assert_eq!((s, a), (CallState::Incoming { call: lesser, video: false }, vec![Action::Ring]));
        // We dialled the lesser id; theirs (greater) arrives: keep ours.
        let ours = CallState::Outgoing { call: lesser, video: false };
        let (s, a) =
            step(&ours, &CallInput::Server { call: greater, update: CallUpdate::Incoming { video: false } }, 0);
        assert_eq!((s, a), (ours.clone(), vec![]));
        // The superseded call's end is about another call: ignored.
        let (s, _) = step(
            &ours,
            &CallInput::Server { call: greater, update: CallUpdate::Ended { reason: CallEnd::Superseded } },
            0,
        );
        assert_eq!(s, ours);
    }

    #[test]
    fn another_device_answering_or_declining_stops_this_one_ringing() {
        let (c, _) = ids();
        let ringing = CallState::Incoming { call: c, video: false };
        for (update, end) in [
            (CallUpdate::AnsweredElsewhere, Ending::AnsweredElsewhere),
            (CallUpdate::DeclinedElsewhere, Ending::DeclinedElsewhere),
        ] {
            let (s, a) = step(&ringing, &CallInput::Server { call: c, update }, 0);
            assert_eq!((s, a), (CallState::Ended { call: c, end }, vec![Action::StopRinging]));
        }
        let (s, _) = step(&CallState::Outgoing { call: c, video: false }, &CallInput::Busy { call: c }, 0);
        assert_eq!(s, CallState::Ended { call: c, end: Ending::Busy });
    }
}
