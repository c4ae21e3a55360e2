// Generates the app's permissions: every command below gets an
// `allow-<command>` permission, granted in src-tauri/capabilities/ — the UI
// can call exactly what is listed there.
const COMMANDS: &[&str] = &[
    "session",
    "sign_in",
    "sign_out",
    "connection_state",
    "conversations",
    "history",
    "send_message",
    "retry_message",
    "edit_message",
    "delete_message",
    "react",
    "pin",
    "mark_read",
    "typing",
    "devices",
    "sign_out_device",
    "sign_out_other_devices",
    "open_direct",
    "create_group",
    "add_member",
    "remove_member",
    "rename_group",
    "set_attention",
    "settings",
    "save_settings",
    "open_link",
    "start_call",
    "accept_call",
    "decline_call",
    "hang_up",
    "set_call_muted",
    "current_call",
    "call_capabilities",
    "report_call_media",
    "audio_devices",
    "send_files",
    "send_file_data",
    "cancel_message",
    "open_attachment",
    "search_messages",
    "search_server",
    "history_around",
    "register_push",
    "unregister_push",
    "on_push",
    "opened_conversation",
];

fn main() {
    println!("cargo:rerun-if-changed=src-tauri/capabilities");
    let attributes = tauri_build::Attributes::new()
        .capabilities_path_pattern("src-tauri/capabilities/**/*")
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    tauri_build::try_build(attributes).expect("tauri build step");
}
