// No commands for the web UI: the shell calls the native side from Rust
// (run_mobile_plugin), which the webview's permissions do not cover.
const COMMANDS: &[&str] = &[];

fn main() {
    tauri_plugin::Builder::new(COMMANDS)
        .android_path("../../mobile/android-push")
        .ios_path("../../mobile/ios/ConfabPushPlugin")
        .build();
}
