//! The typed commands the UI calls. Each is a thin call into the client
//! core; errors reach the UI as [`AppError`] `{kind, message}`.

use crate::error::{AppError, Result};
use crate::settings::{self, Settings};
use crate::shell::Shell;
use confab_core::notify::Attention;
use confab_core::{ChatMessage, ConnectionState, ConversationSummary};
use confab_protocol::{ClientId, ConversationId, UserId};
use serde::{Deserialize, Serialize};
use specta::Type;
use tauri::{AppHandle, Manager, State};

#[derive(Clone, Debug, Serialize, Deserialize, Type)]
pub struct SessionInfo {
    pub user: UserId,
    pub username: String,
    pub server: String,
}

#[tauri::command]
#[specta::specta]
pub async fn session(_app: AppHandle, shell: State<'_, Shell>) -> Result<Option<SessionInfo>> {
    let Ok(client) = shell.client().await else { return Ok(None) };
    Ok(client.session().await?.map(|s| SessionInfo { user: s.user, username: s.username, server: s.server }))
}

/// Signs in (or, with `create`, registers) and starts syncing.
#[tauri::command]
#[specta::specta]
pub async fn sign_in(
    app: AppHandle,
    shell: State<'_, Shell>,
    server: String,
    username: String,
    password: String,
    create: bool,
) -> Result<SessionInfo> {
    let server = server.trim().trim_end_matches('/').to_owned();
    shell.deactivate().await;
    let client = shell.open_profile().await?;
    if create {
        client.register(&server, &username, &password).await?;
    } else {
        client.login(&server, &username, &password).await?;
    }
    let session = client.session().await?.ok_or_else(|| AppError::new("internal", "no session after sign-in"))?;
    let mut prefs = settings::load(&app);
    prefs.server_url = server;
    let _ = settings::save(&app, &prefs);
    shell.activate(&app, client).await?;
    Ok(SessionInfo { user: session.user, username: session.username, server: session.server })
}

#[tauri::command]
#[specta::specta]
pub async fn sign_out(_app: AppHandle, shell: State<'_, Shell>) -> Result<()> {
    if let Some(client) = shell.deactivate().await {
        // Forget the token locally even if the server is unreachable.
        if let Err(e) = client.logout().await {
            tracing::info!(%e, "server not told about sign-out");
        }
    }
    Ok(())
}

#[tauri::command]
#[specta::specta]
pub async fn connection_state(_app: AppHandle, shell: State<'_, Shell>) -> Result<ConnectionState> {
    let client = shell.client().await?;
    let state = client.connection_state().await?;
    let current = state.borrow().clone();
    Ok(current)
}

#[tauri::command]
#[specta::specta]
pub async fn conversations(_app: AppHandle, shell: State<'_, Shell>) -> Result<Vec<ConversationSummary>> {
    Ok(shell.client().await?.conversations().await?)
}

/// A page of messages, oldest first (see `Client::history`).
#[tauri::command]
#[specta::specta]
pub async fn history(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<ChatMessage>> {
    Ok(shell.client().await?.history(conversation, before, limit.min(500)).await?)
}

/// Queues a message; returns it in its queued state at once.
#[tauri::command]
#[specta::specta]
pub async fn send_message(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    text: String,
) -> Result<ChatMessage> {
    let client = shell.client().await?;
    let id = client.send(conversation, &text).await?;
    client.own_message(id).await?.ok_or_else(|| AppError::new("internal", "the queued message vanished"))
}

#[tauri::command]
#[specta::specta]
pub async fn retry_message(_app: AppHandle, shell: State<'_, Shell>, client_id: ClientId) -> Result<bool> {
    Ok(shell.client().await?.retry(client_id).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn edit_message(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    seq: i64,
    text: String,
) -> Result<()> {
    Ok(shell.client().await?.edit(conversation, seq, &text).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn delete_message(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    seq: i64,
) -> Result<()> {
    Ok(shell.client().await?.delete(conversation, seq).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn react(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    seq: i64,
    emoji: String,
    add: bool,
) -> Result<()> {
    Ok(shell.client().await?.react(conversation, seq, &emoji, add).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn pin(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    seq: i64,
    pinned: bool,
) -> Result<()> {
    Ok(shell.client().await?.pin(conversation, seq, pinned).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn mark_read(_app: AppHandle, shell: State<'_, Shell>, conversation: ConversationId, seq: i64) -> Result<()> {
    Ok(shell.client().await?.mark_read(conversation, seq).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn typing(_app: AppHandle, shell: State<'_, Shell>, conversation: ConversationId) -> Result<()> {
    Ok(shell.client().await?.typing(conversation).await?)
}

/// This account's signed-in devices.
#[tauri::command]
#[specta::specta]
pub async fn devices(_app: AppHandle, shell: State<'_, Shell>) -> Result<Vec<confab_protocol::DeviceSession>> {
    Ok(shell.client().await?.sessions().await?)
}

/// Signs one of this account's other devices out.
#[tauri::command]
#[specta::specta]
pub async fn sign_out_device(_app: AppHandle, shell: State<'_, Shell>, session: uuid::Uuid) -> Result<()> {
    Ok(shell.client().await?.revoke_session(session).await?)
}

/// Signs out every device of this account but this one.
#[tauri::command]
#[specta::specta]
pub async fn sign_out_other_devices(_app: AppHandle, shell: State<'_, Shell>) -> Result<()> {
    Ok(shell.client().await?.revoke_other_sessions().await?)
}

#[tauri::command]
#[specta::specta]
pub async fn open_direct(_app: AppHandle, shell: State<'_, Shell>, username: String) -> Result<ConversationId> {
    Ok(shell.client().await?.open_direct(&username).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn create_group(
    _app: AppHandle,
    shell: State<'_, Shell>,
    name: String,
    members: Vec<String>,
) -> Result<ConversationId> {
    Ok(shell.client().await?.create_group(&name, &members).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn add_member(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    username: String,
) -> Result<()> {
    Ok(shell.client().await?.add_member(conversation, &username).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn remove_member(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    username: String,
) -> Result<()> {
    Ok(shell.client().await?.remove_member(conversation, &username).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn rename_group(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    name: String,
) -> Result<()> {
    Ok(shell.client().await?.rename_group(conversation, &name).await?)
}

/// What the UI shows and where the user types, for the notification policy.
#[tauri::command]
#[specta::specta]
pub async fn set_attention(
    _app: AppHandle,
    shell: State<'_, Shell>,
    open_conversation: Option<ConversationId>,
    typing_in: Option<ConversationId>,
) -> Result<()> {
    shell.set_attention(|a: &mut Attention| {
        a.open_conversation = open_conversation;
        a.typing_in = typing_in;
    });
    Ok(())
}

#[tauri::command]
#[specta::specta]
pub async fn settings(app: AppHandle) -> Result<Settings> {
    Ok(settings::load(&app))
}

#[tauri::command]
#[specta::specta]
pub async fn save_settings(app: AppHandle, settings: Settings) -> Result<()> {
    // A newly chosen microphone or speaker that is not there is refused,
    // and nothing is saved.
    #[cfg(desktop)]
    let before = settings::load(&app);
    #[cfg(desktop)]
    if (&before.microphone, &before.speaker) != (&settings.microphone, &settings.speaker) {
        let (handle, prefs) = (app.clone(), settings.clone());
        tauri::async_runtime::spawn_blocking(move || handle.state::<Shell>().use_audio_devices(&prefs, true))
            .await
            .map_err(|e| AppError::new("internal", e.to_string()))??;
    }
    settings::save(&app, &settings).map_err(|e| AppError::new("internal", e))
}

/// The microphones and speakers the native engine can use (where the
/// webview carries calls, the UI lists its own; the phones have no native
/// engine and answer with none).
#[tauri::command]
#[specta::specta]
pub async fn audio_devices(_app: AppHandle) -> Result<confab_core::call::AudioDevices> {
    #[cfg(desktop)]
    return tauri::async_runtime::spawn_blocking(confab_core::call::native::audio::list_devices)
        .await
        .map_err(|e| AppError::new("internal", e.to_string()))?
        .map_err(|e| AppError::new("device_unavailable", e.to_string()));
    #[cfg(mobile)]
    Ok(Default::default())
}

/// Opens an http(s) link in the system browser.
#[tauri::command]
#[specta::specta]
pub async fn open_link(app: AppHandle, url: String) -> Result<()> {
    use tauri_plugin_opener::OpenerExt;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(AppError::new("invalid_input", "only web links can be opened"));
    }
    app.opener().open_url(url, None::<&str>).map_err(|e| AppError::new("internal", e.to_string()))
}

/// What this device can do in a call, for the call buttons and screen.
#[derive(Clone, Debug, Serialize, Deserialize, Type)]
pub struct CallCapabilities {
    /// Audio calls work (a media engine is present).
    pub audio: bool,
    /// Video can be sent and shown here.
    pub video: bool,
}

/// The UI says whether its webview has WebRTC (`RTCPeerConnection` and
/// `getUserMedia`); calls from then on run there, with video, or on the
/// native engine, audio only. Returns what this device can do.
#[tauri::command]
#[specta::specta]
pub async fn call_capabilities(
    _app: AppHandle,
    shell: State<'_, Shell>,
    webview_webrtc: bool,
) -> Result<CallCapabilities> {
    let media = shell.media();
    media.set_webview_available(webview_webrtc);
    // The native engine receives video but cannot show it.
    Ok(CallCapabilities { audio: media.can_call(), video: media.uses_webview() })
}

/// What the UI's `RTCPeerConnection` reports for the running call: a
/// local signal to relay, connected, lost, failed (with a message for the
/// call screen).
#[tauri::command]
#[specta::specta]
pub async fn report_call_media(
    _app: AppHandle,
    shell: State<'_, Shell>,
    call: confab_protocol::CallId,
    event: confab_core::call::MediaEvent,
) -> Result<()> {
    Ok(shell.media().webview().report(call, event)?)
}

/// Calls the other member of a direct conversation.
#[tauri::command]
#[specta::specta]
pub async fn start_call(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    video: bool,
) -> Result<confab_protocol::CallId> {
    Ok(shell.client().await?.call(conversation, video).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn accept_call(_app: AppHandle, shell: State<'_, Shell>, call: confab_protocol::CallId) -> Result<()> {
    Ok(shell.client().await?.accept_call(call).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn decline_call(_app: AppHandle, shell: State<'_, Shell>, call: confab_protocol::CallId) -> Result<()> {
    Ok(shell.client().await?.decline_call(call).await?)
}

/// Cancels a ringing call or ends a running one.
#[tauri::command]
#[specta::specta]
pub async fn hang_up(_app: AppHandle, shell: State<'_, Shell>, call: confab_protocol::CallId) -> Result<()> {
    Ok(shell.client().await?.hang_up(call).await?)
}

#[tauri::command]
#[specta::specta]
pub async fn set_call_muted(
    _app: AppHandle,
    shell: State<'_, Shell>,
    call: confab_protocol::CallId,
    muted: bool,
) -> Result<()> {
    Ok(shell.client().await?.set_call_muted(call, muted).await?)
}

/// This device's call, if any (the last one, once ended).
#[tauri::command]
#[specta::specta]
pub async fn current_call(_app: AppHandle, shell: State<'_, Shell>) -> Result<Option<confab_core::CallView>> {
    Ok(shell.client().await?.current_call().await?)
}

/// Queues a message with files from disk (dropped on the window): copied,
/// uploaded with resume, sent once up. Returns it queued.
#[tauri::command]
#[specta::specta]
pub async fn send_files(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    text: String,
    paths: Vec<String>,
) -> Result<ChatMessage> {
    let client = shell.client().await?;
    let paths: Vec<std::path::PathBuf> = paths.into_iter().map(Into::into).collect();
    let id = client.send_files(conversation, &text, &paths).await?;
    client.own_message(id).await?.ok_or_else(|| AppError::new("internal", "the queued message vanished"))
}

/// The most bytes a file may have when the UI hands it over itself (a
/// pasted image, a file from the picker): larger ones come as paths.
pub const MAX_ATTACH_BYTES: usize = 100 * 1024 * 1024;

/// Queues a message with one file the UI holds in memory (pasted, or
/// picked), as base64.
#[tauri::command]
#[specta::specta]
pub async fn send_file_data(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    text: String,
    name: String,
    data: String,
) -> Result<ChatMessage> {
    use base64::Engine;
    if data.len() / 4 * 3 > MAX_ATTACH_BYTES {
        return Err(AppError::new("invalid_input", "the file is too large to attach this way; drop it instead"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|_| AppError::new("invalid_input", "the file data is not base64"))?;
    let client = shell.client().await?;
    // Staged in the profile; the core copies it into its outgoing files.
    let staging = client.profile().join("staging");
    std::fs::create_dir_all(&staging).map_err(|e| AppError::new("internal", e.to_string()))?;
    let dir = staging.join(uuid::Uuid::now_v7().simple().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| AppError::new("internal", e.to_string()))?;
    let safe = if confab_protocol::media::validate_file_name(&name) { name } else { "file".to_owned() };
    let path = dir.join(&safe);
    std::fs::write(&path, bytes).map_err(|e| AppError::new("internal", e.to_string()))?;
    let sent = client.send_files(conversation, &text, std::slice::from_ref(&path)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let id = sent?;
    client.own_message(id).await?.ok_or_else(|| AppError::new("internal", "the queued message vanished"))
}

/// Gives up on an unsent message (uploading, queued or failed).
#[tauri::command]
#[specta::specta]
pub async fn cancel_message(_app: AppHandle, shell: State<'_, Shell>, client_id: ClientId) -> Result<bool> {
    Ok(shell.client().await?.cancel_send(client_id).await?)
}

/// Saves an attachment into the Downloads folder under its name and opens
/// it with the system's app for it.
#[tauri::command]
#[specta::specta]
pub async fn open_attachment(app: AppHandle, shell: State<'_, Shell>, hash: String, name: String) -> Result<()> {
    use tauri_plugin_opener::OpenerExt;
    let client = shell.client().await?;
    let cached = client.media(&hash, false).await?;
    let dir = app.path().download_dir().map_err(|e| AppError::new("internal", e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| AppError::new("internal", e.to_string()))?;
    let name = if confab_protocol::media::validate_file_name(&name) { name } else { hash.clone() };
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.clone(), String::new()),
    };
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{stem} ({n}){ext}"));
        n += 1;
    }
    std::fs::copy(&cached, &target).map_err(|e| AppError::new("internal", e.to_string()))?;
    app.opener().open_path(target.to_string_lossy(), None::<&str>).map_err(|e| AppError::new("internal", e.to_string()))
}

/// Searches this device's messages (instant, offline).
#[tauri::command]
#[specta::specta]
pub async fn search_messages(
    _app: AppHandle,
    shell: State<'_, Shell>,
    query: String,
    conversation: Option<ConversationId>,
) -> Result<Vec<confab_core::SearchResult>> {
    Ok(shell.client().await?.search(&query, conversation, 50).await?)
}

/// Searches the server's history (what this device never downloaded).
#[tauri::command]
#[specta::specta]
pub async fn search_server(
    _app: AppHandle,
    shell: State<'_, Shell>,
    query: String,
    conversation: Option<ConversationId>,
) -> Result<Vec<confab_core::SearchResult>> {
    Ok(shell.client().await?.search_server(&query, conversation, None, 50).await?.0)
}

/// Messages around `seq`, oldest first: for opening a search hit.
#[tauri::command]
#[specta::specta]
pub async fn history_around(
    _app: AppHandle,
    shell: State<'_, Shell>,
    conversation: ConversationId,
    seq: i64,
) -> Result<Vec<ChatMessage>> {
    Ok(shell.client().await?.history(conversation, Some(seq + 25), 60).await?)
}
