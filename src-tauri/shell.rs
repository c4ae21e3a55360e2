//! The account's client core, event forwarding, notifications and the tray.

use crate::error::{AppError, Result};
use crate::settings;
use confab_core::call::{ExternalEngine, SelectedEngine};
use confab_core::notify::Attention;
use confab_core::{Client, ClientEvent};
use serde::{Deserialize, Serialize};
use specta::Type;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_notification::NotificationExt;
use tauri_specta::Event;

/// Every core event, forwarded to the UI as is.
#[derive(Clone, Debug, Serialize, Deserialize, Type, Event)]
pub struct CoreEvent(pub ClientEvent);

/// The user clicked a notification: show this conversation.
#[derive(Clone, Debug, Serialize, Deserialize, Type, Event)]
pub struct OpenConversation(pub confab_protocol::ConversationId);

/// Ask the UI to play the bundled notification sound.
#[derive(Clone, Debug, Serialize, Deserialize, Type, Event)]
pub struct PlaySound;

/// What the core asks of the UI's `RTCPeerConnection`, where the webview
/// carries calls (start, the other side's signals, ICE restart, mute, stop).
#[derive(Clone, Debug, Serialize, Deserialize, Type, Event)]
pub struct WebviewMedia(pub confab_core::call::ExternalMedia);

pub struct Shell {
    root: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
    attention: Mutex<Attention>,
    /// Plays while a call rings on this device (or, as ringback, at the other end).
    #[cfg(desktop)]
    ringtone: Mutex<Option<(confab_core::call::native::audio::Tone, confab_core::call::native::audio::Ringtone)>>,
    /// Carries calls: the webview's WebRTC where the UI has it, else (on
    /// desktops) native. The phones' webviews always have WebRTC.
    media: Arc<SelectedEngine>,
    #[cfg(desktop)]
    native: Arc<confab_core::call::native::NativeEngine>,
    /// The webview engine's requests, until [`forward_webview_media`] takes them.
    to_webview: Mutex<Option<tokio::sync::mpsc::Receiver<confab_core::call::ExternalMedia>>>,
}

struct Account {
    client: Arc<Client>,
    forwarder: tauri::async_runtime::JoinHandle<()>,
}

impl Shell {
    pub fn new(root: PathBuf) -> Self {
        // Bounded: the UI drains it promptly; a stuck UI stalls its own
        // call's signaling, never the client.
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        #[cfg(desktop)]
        let native = Arc::new(native_engine());
        #[cfg(desktop)]
        let media = SelectedEngine::new(ExternalEngine::new(tx), Some(native.clone()));
        #[cfg(mobile)]
        let media = SelectedEngine::new(ExternalEngine::new(tx), None);
        Shell {
            root,
            account: Default::default(),
            attention: Default::default(),
            #[cfg(desktop)]
            ringtone: Default::default(),
            media: Arc::new(media),
            #[cfg(desktop)]
            native,
            to_webview: Mutex::new(Some(rx)),
        }
    }

    pub fn media(&self) -> &SelectedEngine {
        &self.media
    }

    /// The chosen microphone and speaker, for the next call and the running
    /// one. A device that is not there is refused when `strict` (the user
    /// just chose it), else replaced by the default until it is back.
    /// Blocking: it lists the devices.
    #[cfg(desktop)]
    pub fn use_audio_devices(&self, prefs: &settings::Settings, strict: bool) -> Result<()> {
        let mut prefs = prefs.clone();
        if prefs.microphone.is_some() || prefs.speaker.is_some() {
            let there = confab_core::call::native::audio::list_devices().unwrap_or_default();
            for (chosen, list, what) in [
                (&mut prefs.microphone, &there.microphones, "microphone"),
                (&mut prefs.speaker, &there.speakers, "speaker"),
            ] {
                if let Some(name) = chosen.as_ref().filter(|n| !list.contains(n)) {
                    if strict {
                        return Err(AppError::new("device_unavailable", format!("There is no {what} named {name}.")));
                    }
                    tracing::warn!(%name, "the chosen {what} is not there; using the default");
                    *chosen = None;
                }
            }
        }
        let (input, output) = prefs.audio_devices();
        self.native.use_devices(input, output).map_err(|e| AppError::new("device_unavailable", e.to_string()))
    }

    /// Where the profile and the settings are: `app_data_dir()`, or on iOS
    /// the App Group container the notification extension shares.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The profile directory of the (single, for now) account.
    fn profile(&self) -> PathBuf {
        self.root.join("profile")
    }

    pub async fn client(&self) -> Result<Arc<Client>> {
        self.account
            .lock()
            .await
            .as_ref()
            .map(|a| a.client.clone())
            .ok_or_else(|| AppError::new("not_signed_in", "Sign in first"))
    }

    pub async fn open_profile(&self) -> Result<Client> {
        let host = confab_core::host_name().unwrap_or_else(|| std::env::consts::OS.to_owned());
        Ok(Client::open(&self.profile())
            .await?
            .with_secret_store(Arc::new(crate::keychain::Keychain))
            .with_device_name(format!("Confab app on {host}"))
            .with_media_engine(self.media.clone()))
    }

    /// Plays the ringtone, the ringback, or (None) nothing.
    #[cfg(desktop)]
    fn ring(&self, which: Option<confab_core::call::native::audio::Tone>) {
        let mut playing = self.ringtone.lock().unwrap_or_else(|e| e.into_inner());
        let same = matches!((&*playing, which), (Some((now, _)), Some(want)) if *now == want);
        if same {
            return;
        }
        // Dropping it stops it.
        playing.take();
        if let Some(tone) = which {
            use confab_core::call::native::audio::Ringtone;
            match Ringtone::start(&self.native.devices().1, tone) {
                Ok(t) => *playing = Some((tone, t)),
                Err(e) => tracing::warn!(%e, "no ringtone"),
            }
        }
    }

    pub fn attention(&self) -> Attention {
        self.attention.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_attention(&self, f: impl FnOnce(&mut Attention)) {
        f(&mut self.attention.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Starts the client and the forwarding of its events.
    pub async fn activate<R: Runtime>(&self, app: &AppHandle<R>, client: Client) -> Result<()> {
        client.session().await?.ok_or_else(|| AppError::new("not_signed_in", "Sign in first"))?;
        let client = Arc::new(client);
        // Subscribe before starting, so no event is missed.
        let events = client.subscribe();
        client.start().await?;
        let forwarder = tauri::async_runtime::spawn(forward(app.clone(), client.clone(), events));
        // A push the native handler receives in this process goes to this
        // client (which notifies through the forwarder), not to a second one.
        let handle = app.clone();
        confab_mobile::set_app_handler(Some(Box::new(move |wake, budget| {
            let handle = handle.clone();
            tauri::async_runtime::spawn(async move {
                if let Err(e) = crate::push::catch_up_running(&handle, &wake, budget).await {
                    tracing::warn!(%e, "catching up after a push failed");
                }
            });
        })));
        if let Some(old) = self.account.lock().await.replace(Account { client, forwarder }) {
            old.forwarder.abort();
            old.client.stop().await;
        }
        tauri::async_runtime::spawn(crate::phone::client_started(app.clone()));
        Ok(())
    }

    pub async fn deactivate(&self) -> Option<Arc<Client>> {
        #[cfg(desktop)]
        self.ringtone.lock().unwrap_or_else(|e| e.into_inner()).take();
        confab_mobile::set_app_handler(None);
        let account = self.account.lock().await.take()?;
        account.forwarder.abort();
        account.client.stop().await;
        Some(account.client)
    }
}

/// Where the webview has no WebRTC, calls run on the native engine: the
/// microphone and speaker through cpal. `CONFAB_MEDIA_BIND` (addresses, comma-separated) limits where it
/// gathers candidates, and `CONFAB_RELAY_ONLY=true` hides this device's
/// address behind TURN, as for the CLI.
#[cfg(desktop)]
fn native_engine() -> confab_core::call::native::NativeEngine {
    use confab_core::call::native::{NativeConfig, NativeEngine};
    let mut config = NativeConfig::default();
    if let Ok(bind) = std::env::var("CONFAB_MEDIA_BIND") {
        let addrs: Vec<std::net::IpAddr> = bind.split(',').filter_map(|a| a.trim().parse().ok()).collect();
        if !addrs.is_empty() {
            config.bind = addrs;
        }
    }
    config.relay_only = std::env::var("CONFAB_RELAY_ONLY").is_ok_and(|v| v == "true" || v == "1");
    NativeEngine::new(config)
}

/// Passes the webview engine's requests to the UI, in order.
pub fn forward_webview_media<R: Runtime>(app: &AppHandle<R>) {
    let Some(mut requests) = app.state::<Shell>().to_webview.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        while let Some(request) = requests.recv().await {
            if let Err(e) = WebviewMedia(request).emit(&app) {
                tracing::warn!(%e, "cannot pass a call request to the UI");
            }
        }
    });
}

/// On launch: start the saved session, if any.
pub async fn resume<R: Runtime>(app: &AppHandle<R>) -> Result<()> {
    let shell = app.state::<Shell>();
    let client = shell.open_profile().await?;
    if client.session().await?.is_some_and(|s| !s.token.is_empty()) {
        shell.activate(app, client).await?;
    }
    Ok(())
}

async fn forward<R: Runtime>(
    app: AppHandle<R>,
    client: Arc<Client>,
    mut events: tokio::sync::broadcast::Receiver<ClientEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut unread_stale = false;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            // The UI reloads from the cache on SyncCompleted; tell it to.
            Err(RecvError::Lagged(_)) => ClientEvent::SyncCompleted,
            Err(RecvError::Closed) => return,
        };
        if let ClientEvent::Call { call } = &event {
            // The phones ring and keep calls going through the system.
            crate::phone::call_changed(&app, call).await;
            #[cfg(desktop)]
            ring_and_announce(&app, call);
        }
        // Live messages notify one by one; what arrived while away is
        // summarised, one notification per conversation (the core decides).
        let notifies =
            matches!(event, ClientEvent::MessageAdded { live: true, .. } | ClientEvent::MissedMessages { .. });
        let notice = match notifies {
            true => {
                let (prefs, attention) = (settings::load(&app), app.state::<Shell>().attention());
                client.notice(&event, &attention, &prefs.notify_settings()).await
            }
            false => None,
        };
        if let Some(notice) = notice {
            // Carried back on a click, to open the conversation.
            let builder = app
                .notification()
                .builder()
                .title(notice.title)
                .body(notice.body)
                .extra(NOTIFIED_CONVERSATION, notice.conversation.to_string());
            if let Err(e) = builder.show() {
                tracing::warn!(%e, "notification failed");
            }
            if notice.sound {
                let _ = PlaySound.emit(&app);
            }
        }
        unread_stale |= matches!(
            event,
            ClientEvent::MessageAdded { .. } | ClientEvent::Receipt { .. } | ClientEvent::SyncCompleted
        );
        // Once per burst of events.
        if unread_stale && events.is_empty() {
            unread_stale = false;
            update_unread(&app, &client).await;
        }
        if let Err(e) = CoreEvent(event).emit(&app) {
            tracing::warn!(%e, "cannot forward an event to the UI");
        }
    }
}

/// Desktops ring through the native engine's speaker and announce a call
/// ringing behind other windows.
#[cfg(desktop)]
fn ring_and_announce<R: Runtime>(app: &AppHandle<R>, call: &confab_core::CallView) {
    use confab_core::call::native::audio::Tone;
    let shell = app.state::<Shell>();
    let prefs = settings::load(app);
    let incoming = call.phase == confab_core::CallPhase::Ringing && !call.outgoing;
    // The caller hears ringback until the other side answers; it is
    // part of the call, so "sound off" does not silence it.
    let calling = call.phase == confab_core::CallPhase::Calling;
    shell.ring(match () {
        _ if incoming && prefs.sound => Some(Tone::Ring),
        _ if calling => Some(Tone::Ringback),
        _ => None,
    });
    // A call ringing while the window is not in front is announced;
    // a click shows the window, where the call screen is.
    if incoming && prefs.notifications && !shell.attention().window_focused {
        let kind = if call.video { "video" } else { "voice" };
        let builder = app
            .notification()
            .builder()
            .title(call.peer_name.clone())
            .body(format!("Incoming {kind} call"))
            .extra(NOTIFIED_CONVERSATION, call.conversation.to_string());
        if let Err(e) = builder.show() {
            tracing::warn!(%e, "notification failed");
        }
    }
}

/// Unread total in the tray tooltip.
async fn update_unread<R: Runtime>(app: &AppHandle<R>, client: &Client) {
    #[cfg(desktop)]
    {
        let unread = client.unread_total().await.unwrap_or(0);
        if let Some(tray) = app.tray_by_id("main") {
            let tip = if unread > 0 { format!("Confab — {unread} unread") } else { "Confab".to_owned() };
            let _ = tray.set_tooltip(Some(tip));
        }
    }
    #[cfg(not(desktop))]
    let _ = (app, client);
}

const NOTIFIED_CONVERSATION: &str = "conversation";

/// Opens the conversation of a clicked notification, where the platform
/// reports clicks (Linux and the BSDs through the notification server,
/// macOS, Windows, Android, iOS).
pub fn handle_notification_clicks<R: Runtime>(app: &AppHandle<R>) {
    let handle = app.clone();
    let registered = app.notification().on_action(move |action| {
        if action.action_id() != "tap" {
            return;
        }
        let conversation = action
            .notification()
            .and_then(|n| n.extra().get(NOTIFIED_CONVERSATION))
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok());
        show_main_window(&handle);
        if let Some(id) = conversation {
            let _ = OpenConversation(id).emit(&handle);
        }
    });
    if let Err(e) = registered {
        tracing::warn!(%e, "notification clicks will not open conversations");
    }
}

pub fn window_focus_changed<R: Runtime>(app: &AppHandle<R>, focused: bool) {
    if let Some(shell) = app.try_state::<Shell>() {
        shell.set_attention(|a| a.window_focused = focused);
    }
}

pub fn show_main_window<R: Runtime>(app: &AppHandle<R>) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        #[cfg(desktop)]
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

#[cfg(desktop)]
pub fn setup_tray<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    use tauri::menu::{Menu, MenuItem};
    use tauri::tray::TrayIconBuilder;
    let show = MenuItem::with_id(app, "show", "Show Confab", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&show, &quit])?;
    let mut tray =
        TrayIconBuilder::with_id("main").tooltip("Confab").menu(&menu).on_menu_event(|app, event| {
            match event.id.as_ref() {
                "show" => show_main_window(app),
                "quit" => app.exit(0),
                _ => {}
            }
        });
    if let Some(icon) = app.default_window_icon() {
        tray = tray.icon(icon.clone());
    }
    // Without a tray host (some Linux desktops) the app still works; it
    // just cannot hide to the tray.
    if let Err(e) = tray.build(app) {
        tracing::warn!(%e, "no system tray");
    }
    Ok(())
}
