//! The shell's side of the phone (`tauri-plugin-confab-push`): registers
//! the platform's push target with the server, carries what the user chose
//! in the system's UI (a notification, CallKit) to the core, tells the
//! system's call UI about the core's calls, and passes pushes that reach
//! the running app to the catch-up. On desktops the plugin answers nothing
//! and none of this does anything.

use crate::shell::{OpenConversation, Shell};
use confab_core::{CallEndReason, CallPhase, CallView, Client};
use confab_protocol::{CallId, ConversationId, PushTarget};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_confab_push::{Action, ActionKind, EndReason, Event, IncomingCall, PhoneExt};
use tauri_specta::Event as _;

/// What was last told to the server and to the system's call UI, so each
/// is told once; where the app is (foreground or background).
#[derive(Default)]
pub struct PhoneState {
    registered: Mutex<Option<PushTarget>>,
    call: Mutex<Option<(CallId, Stage)>>,
    /// Counts moves to and from the background; odd while in it.
    background: AtomicU64,
    /// Held while the client is stopped or started for the background, so
    /// a stop and a start never interleave.
    lifecycle: tokio::sync::Mutex<()>,
    /// A conversation a notification asked to open, until the UI takes it
    /// (on a cold start the UI may not be listening yet).
    opened: Mutex<Option<ConversationId>>,
}

impl PhoneState {
    fn in_background(&self) -> bool {
        !self.background.load(Ordering::SeqCst).is_multiple_of(2)
    }
}

/// How long the app may be in the background before its client stops:
/// long enough for a permission prompt or a glance at the notification
/// shade, short enough to beat iOS's suspension (about 5 s).
const BACKGROUND_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Ringing,
    UnderWay,
    Ended,
}

/// At setup: follow the native side's reports, and take what it queued
/// before the app was up (an Answer tapped on the lock screen).
pub fn start<R: Runtime>(app: &AppHandle<R>) {
    app.manage(PhoneState::default());
    let listeners = [(Event::Target, app.clone()), (Event::Action, app.clone()), (Event::Push, app.clone())];
    for (event, handle) in listeners {
        let on = move || {
            let handle = handle.clone();
            tauri::async_runtime::spawn(async move { react(&handle, event).await });
        };
        if let Err(e) = app.phone().listen(event, on) {
            tracing::warn!(%e, event = event.name(), "the phone's events will not reach the shell");
        }
    }
    let handle = app.clone();
    tauri::async_runtime::spawn(async move {
        // iOS may launch the app in the background for a push. Asked off
        // the main thread, which the answer needs (setup runs on it).
        if handle.phone().in_background().await.unwrap_or(false) {
            let state = handle.state::<PhoneState>();
            // Unless the app has moved meanwhile.
            if state.background.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                schedule_stop(&handle);
            }
        }
        react(&handle, Event::Push).await;
    });
}

async fn react<R: Runtime>(app: &AppHandle<R>, event: Event) {
    match event {
        Event::Target => register(app).await,
        Event::Action => run_actions(app).await,
        Event::Push => run_pushes(app).await,
    }
}

/// A client is running (signed in or resumed): wake it through this
/// phone's push target from now on, and act on what the user chose while
/// it was starting.
///
/// Boxed: starting a client from here (an action, a push) comes back to
/// this function through `Shell::activate`, and the compiler needs a named
/// future type to see that the cycle is `Send`.
pub fn client_started<R: Runtime>(app: AppHandle<R>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let app = &app;
        // A new session has no target on the server yet.
        if let Some(state) = app.try_state::<PhoneState>() {
            state.registered.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        register(app).await;
        run_actions(app).await;
        // Started in the background (for a push, a call action): not for long.
        schedule_stop(app);
    })
}

/// The app went to the background (or came back). A phone freezes a
/// background app with its socket open, and the server, seeing the socket,
/// would not push; on iOS a suspended app that holds a lock on the shared
/// profile is killed. So, unless a call is under way, the client stops
/// after [`BACKGROUND_GRACE`] (the server wakes the phone by push from
/// then on, and push handlers catch up on the profile), and starts again
/// when the app comes back (or the user acts on a call from the lock
/// screen). iOS reports leaving the foreground on resign-active (a prompt,
/// Control Center) but coming back only from the background, so the shell
/// also takes focus as being in front.
pub fn backgrounded<R: Runtime>(app: &AppHandle<R>, background: bool) {
    let Some(state) = app.try_state::<PhoneState>() else { return };
    if state.in_background() == background {
        return;
    }
    state.background.fetch_add(1, Ordering::SeqCst);
    if background {
        return schedule_stop(app);
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        ensure_client(&app).await;
    });
}

/// The running client, started from the saved session if the background
/// stopped it; none when signed out.
async fn ensure_client<R: Runtime>(app: &AppHandle<R>) -> Option<Arc<Client>> {
    let shell = app.state::<Shell>();
    if let Ok(client) = shell.client().await {
        return Some(client);
    }
    let state = app.try_state::<PhoneState>()?;
    let _turn = state.lifecycle.lock().await;
    if shell.client().await.is_err() {
        if let Err(e) = crate::shell::resume(app).await {
            tracing::warn!(%e, "could not resume the session");
        }
    }
    shell.client().await.ok()
}

/// In the background, stops the client after [`BACKGROUND_GRACE`] unless
/// the app came back or a call is under way by then.
fn schedule_stop<R: Runtime>(app: &AppHandle<R>) {
    let Some(state) = app.try_state::<PhoneState>() else { return };
    if !state.in_background() {
        return;
    }
    let went = state.background.load(Ordering::SeqCst);
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        tokio::time::sleep(BACKGROUND_GRACE).await;
        let Some(state) = app.try_state::<PhoneState>() else { return };
        let _turn = state.lifecycle.lock().await;
        let still_away = || state.background.load(Ordering::SeqCst) == went;
        let shell = app.state::<Shell>();
        let Ok(client) = shell.client().await else { return };
        let in_call =
            client.current_call().await.ok().flatten().is_some_and(|c| !matches!(c.phase, CallPhase::Ended { .. }));
        // Checked last, after the awaits: the app may have come back.
        if !in_call && still_away() {
            shell.deactivate().await;
        }
    });
}

/// The conversation a notification asked to open, once (for the UI at its
/// start; later ones also arrive as the `OpenConversation` event).
#[tauri::command]
#[specta::specta]
pub fn opened_conversation(state: tauri::State<'_, PhoneState>) -> crate::error::Result<Option<ConversationId>> {
    Ok(state.opened.lock().unwrap_or_else(|e| e.into_inner()).take())
}

/// Hands the push target to the server when it is new or changed.
async fn register<R: Runtime>(app: &AppHandle<R>) {
    let (Some(state), Ok(client)) = (app.try_state::<PhoneState>(), app.state::<Shell>().client().await) else {
        return;
    };
    let target = match app.phone().pending_target().await {
        Ok(Some(target)) => target,
        Ok(None) => return,
        Err(e) => return tracing::warn!(%e, "no push target"),
    };
    if state.registered.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&target) {
        return;
    }
    match client.set_push(target.clone()).await {
        Ok(()) => *state.registered.lock().unwrap_or_else(|e| e.into_inner()) = Some(target),
        // Offline now: the next start, sign-in or token change registers it.
        Err(e) => tracing::warn!(%e, "could not register this phone for wake-ups"),
    }
}

/// Carries the user's choices to the core, starting the client if the
/// background stopped it (an answer on the lock screen). Signed out, they
/// stay queued.
async fn run_actions<R: Runtime>(app: &AppHandle<R>) {
    let Some(client) = ensure_client(app).await else { return };
    let actions = match app.phone().take_actions().await {
        Ok(actions) => actions,
        Err(e) => return tracing::warn!(%e, "cannot read the phone's actions"),
    };
    for Action { action, call, conversation } in actions {
        let result = match (action, call) {
            (ActionKind::Accept, Some(call)) => client.accept_call(call).await,
            (ActionKind::Decline, Some(call)) => client.decline_call(call).await,
            (ActionKind::Hangup, Some(call)) => client.hang_up(call).await,
            (ActionKind::Mute, Some(call)) => client.set_call_muted(call, true).await,
            (ActionKind::Unmute, Some(call)) => client.set_call_muted(call, false).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            // Typically the call ended meanwhile; the core's call event says so.
            tracing::info!(%e, ?action, "a call action from the phone's UI did not apply");
        }
        if matches!(action, ActionKind::Open | ActionKind::Show | ActionKind::Accept) {
            crate::shell::show_main_window(app);
        }
        if let (ActionKind::Open, Some(id)) = (action, conversation) {
            if let Some(state) = app.try_state::<PhoneState>() {
                *state.opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
            }
            let _ = OpenConversation(id).emit(app);
        }
    }
}

/// Pushes that reached the running app (iOS background pushes): catch up,
/// then tell the system whether anything came.
async fn run_pushes<R: Runtime>(app: &AppHandle<R>) {
    let pushes = match app.phone().take_pushes().await {
        Ok(pushes) => pushes,
        Err(e) => return tracing::warn!(%e, "cannot read the phone's pushes"),
    };
    for push in pushes {
        let data = push.data.unwrap_or_default();
        // iOS gives a background push 30 s.
        let caught = crate::push::handle_push(app, &data, Duration::from_secs(25)).await;
        let new_data = caught.as_ref().is_ok_and(|c| !c.notices.is_empty() || c.ringing.is_some());
        if let Err(e) = &caught {
            tracing::info!(%e, "a push's catch-up failed");
        }
        if let Err(e) = app.phone().finish_push(push.id, new_data).await {
            tracing::warn!(%e, "cannot finish a push");
        }
    }
    // The catch-up started the client in the background: stop it again.
    schedule_stop(app);
}

/// The core's call changed: tell the system's call UI, once per stage.
pub async fn call_changed<R: Runtime>(app: &AppHandle<R>, call: &CallView) {
    let Some(state) = app.try_state::<PhoneState>() else { return };
    {
        let mut last = state.call.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stage) = stage_to_tell(*last, call) else { return };
        *last = Some((call.call, stage));
    }
    let phone = app.phone();
    let told = match &call.phase {
        CallPhase::Ringing => {
            let ringing = IncomingCall {
                call: call.call,
                conversation: call.conversation,
                peer_name: call.peer_name.clone(),
                video: call.video,
            };
            phone.incoming_call(&ringing).await
        }
        CallPhase::Ended { reason, .. } => phone.end_call(call.call, end_reason(*reason, call.outgoing)).await,
        _ => phone.answer_call(call.call, &call.peer_name).await,
    };
    if let Err(e) = told {
        tracing::warn!(%e, "the phone's call UI was not updated");
    }
    // The call kept the client running in the background.
    if matches!(call.phase, CallPhase::Ended { .. }) {
        schedule_stop(app);
    }
}

/// The stage of `call` the system's call UI has not heard of yet, if any.
/// A call rings there (incoming), is under way (placed or answered here:
/// Android keeps it in the foreground, CallKit marks it answered), ends.
fn stage_to_tell(last: Option<(CallId, Stage)>, call: &CallView) -> Option<Stage> {
    let stage = match &call.phase {
        CallPhase::Ringing if !call.outgoing => Stage::Ringing,
        CallPhase::Ringing => return None,
        CallPhase::Calling | CallPhase::Connecting | CallPhase::Active { .. } | CallPhase::Reconnecting { .. } => {
            Stage::UnderWay
        }
        CallPhase::Ended { .. } => Stage::Ended,
    };
    (last != Some((call.call, stage))).then_some(stage)
}

/// How the system's call UI words an ending.
fn end_reason(reason: CallEndReason, outgoing: bool) -> EndReason {
    match reason {
        CallEndReason::EndedHere => EndReason::Local,
        CallEndReason::Missed if !outgoing => EndReason::Unanswered,
        CallEndReason::AnsweredElsewhere => EndReason::AnsweredElsewhere,
        CallEndReason::DeclinedElsewhere => EndReason::DeclinedElsewhere,
        CallEndReason::Failed | CallEndReason::ConnectionLost => EndReason::Failed,
        CallEndReason::Declined
        | CallEndReason::Cancelled
        | CallEndReason::Missed
        | CallEndReason::HungUp
        | CallEndReason::Superseded
        | CallEndReason::Busy => EndReason::Remote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(phase: CallPhase, outgoing: bool) -> CallView {
        CallView {
            call: "0f6b2d3e-9a41-4c3b-8d7e-2a1b3c4d5e6f".parse().unwrap(),
            conversation: "7c9e6679-7425-40de-944b-e07fc1f90ae7".parse().unwrap(),
            peer: "2a1b3c4d-9a41-4c3b-8d7e-0f6b2d3e5e6f".parse().unwrap(),
            peer_name: "alice".into(),
            video: false,
            outgoing,
            muted: false,
            phase,
        }
    }

    #[test]
    fn the_system_hears_of_each_stage_of_a_call_once() {
        let ringing = call(CallPhase::Ringing, false);
        let id = ringing.call;
        assert_eq!(stage_to_tell(None, &ringing), Some(Stage::Ringing));
        // The peer's name or mute state changed: nothing new to ring.
        assert_eq!(stage_to_tell(Some((id, Stage::Ringing)), &ringing), None);
        let connecting = call(CallPhase::Connecting, false);
        assert_eq!(stage_to_tell(Some((id, Stage::Ringing)), &connecting), Some(Stage::UnderWay));
        // Active and reconnecting are the same stage for the system.
        let active = call(CallPhase::Active { since: 5 }, false);
        assert_eq!(stage_to_tell(Some((id, Stage::UnderWay)), &active), None);
        let reconnecting = call(CallPhase::Reconnecting { since: 9 }, false);
        assert_eq!(stage_to_tell(Some((id, Stage::UnderWay)), &reconnecting), None);
        let ended = call(CallPhase::Ended { reason: CallEndReason::HungUp, duration_ms: Some(4), error: None }, false);
        assert_eq!(stage_to_tell(Some((id, Stage::UnderWay)), &ended), Some(Stage::Ended));
        assert_eq!(stage_to_tell(Some((id, Stage::Ended)), &ended), None);
        // A new call with the same stage as the last one's is told.
        let mut next = call(CallPhase::Ringing, false);
        next.call = "11111111-9a41-4c3b-8d7e-2a1b3c4d5e6f".parse().unwrap();
        assert_eq!(stage_to_tell(Some((id, Stage::Ringing)), &next), Some(Stage::Ringing));
        // Placing a call keeps it going in the background from the start.
        assert_eq!(stage_to_tell(None, &call(CallPhase::Calling, true)), Some(Stage::UnderWay));
    }

    #[test]
    fn endings_map_to_the_system_call_uis_words() {
        assert_eq!(end_reason(CallEndReason::EndedHere, false), EndReason::Local);
        assert_eq!(end_reason(CallEndReason::Missed, false), EndReason::Unanswered);
        // Our call went unanswered at their end: it ended remotely for us.
        assert_eq!(end_reason(CallEndReason::Missed, true), EndReason::Remote);
        assert_eq!(end_reason(CallEndReason::AnsweredElsewhere, false), EndReason::AnsweredElsewhere);
        assert_eq!(end_reason(CallEndReason::Cancelled, false), EndReason::Remote);
        assert_eq!(end_reason(CallEndReason::ConnectionLost, true), EndReason::Failed);
    }
}

/// The background lifecycle with the real core and a real server on
/// loopback; the app runs on Tauri's mock runtime, where the plugin's
/// desktop half stands for a phone that has no push target yet.
#[cfg(test)]
mod lifecycle {
    use super::*;
    use tauri::test::{mock_builder, mock_context, noop_assets, MockRuntime};

    struct Rig {
        app: tauri::App<MockRuntime>,
        server: confab_server::Server,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = confab_server::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("server.db"));
        let server = confab_server::start(config).await.expect("server");
        let app = mock_builder()
            .plugin(tauri_plugin_store::Builder::default().build())
            .plugin(tauri_plugin_notification::init())
            .plugin(tauri_plugin_confab_push::init())
            .build(mock_context(noop_assets()))
            .expect("mock app");
        tauri_specta::Builder::<MockRuntime>::new()
            .events(tauri_specta::collect_events![
                crate::shell::CoreEvent,
                crate::shell::PlaySound,
                OpenConversation,
                crate::shell::WebviewMedia
            ])
            .mount_events(&app);
        app.manage(Shell::new(dir.path().join("app")));
        start(app.handle());
        Rig { app, server, _dir: dir }
    }

    async fn sign_in(rig: &Rig, name: &str) -> confab_protocol::UserId {
        let shell = rig.app.state::<Shell>();
        let client = shell.open_profile().await.expect("profile");
        client.register(&format!("http://{}", rig.server.addr), name, "correct horse battery").await.expect("register");
        let user = client.session().await.unwrap().unwrap().user;
        shell.activate(rig.app.handle(), client).await.expect("activate");
        user
    }

    async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_the_background_the_client_lets_go_of_its_socket_and_comes_back_in_front() {
        let rig = rig().await;
        let user = sign_in(&rig, "bob").await;
        let hub = &rig.server.state.service.hub;
        until("bob is connected", async || hub.connections(user) == 1).await;
        let app = rig.app.handle();

        // A moment away (a prompt, the notification shade) changes nothing.
        backgrounded(app, true);
        backgrounded(app, false);
        tokio::time::sleep(BACKGROUND_GRACE + Duration::from_millis(500)).await;
        assert_eq!(hub.connections(user), 1, "a short trip away kept the socket");
        assert!(rig.app.state::<Shell>().client().await.is_ok());

        // Away for good: the socket goes, so the server wakes the phone by push.
        backgrounded(app, true);
        until("the client stopped", async || rig.app.state::<Shell>().client().await.is_err()).await;
        until("the server saw bob go", async || hub.connections(user) == 0).await;

        // Back in front (iOS says so by focus): the saved session resumes.
        backgrounded(app, false);
        until("the client is back", async || rig.app.state::<Shell>().client().await.is_ok()).await;
        until("bob is connected again", async || hub.connections(user) == 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_keeps_the_client_in_the_background_until_it_ends() {
        let rig = rig().await;
        let bob = sign_in(&rig, "bob").await;
        // Alice calls from a client of her own.
        let dir = tempfile::tempdir().expect("tempdir");
        // Her media would run in a webview: signaling is all this test needs.
        let (to_webview, _requests) = tokio::sync::mpsc::channel(64);
        let engine = Arc::new(confab_core::call::ExternalEngine::new(to_webview));
        let alice = Client::open(dir.path()).await.expect("profile").with_media_engine(engine);
        alice.register(&format!("http://{}", rig.server.addr), "alice", "correct horse battery").await.unwrap();
        alice.start().await.unwrap();
        let conversation = alice.open_direct("bob").await.expect("direct");
        let hub = &rig.server.state.service.hub;
        until("bob is connected", async || hub.connections(bob) == 1).await;
        let call = alice.call(conversation, false).await.expect("call");
        let shell_client = rig.app.state::<Shell>().client().await.unwrap();
        until("bob's phone rings", async || {
            shell_client.current_call().await.ok().flatten().is_some_and(|c| c.phase == CallPhase::Ringing)
        })
        .await;

        let app = rig.app.handle();
        backgrounded(app, true);
        tokio::time::sleep(BACKGROUND_GRACE + Duration::from_millis(500)).await;
        assert_eq!(hub.connections(bob), 1, "a ringing call keeps the socket");

        // The caller gives up: the call ends, and the client stops after all.
        alice.hang_up(call).await.expect("cancel");
        until("the client stopped after the call", async || rig.app.state::<Shell>().client().await.is_err()).await;
        until("the server saw bob go", async || hub.connections(bob) == 0).await;
        alice.stop().await;
    }
}
