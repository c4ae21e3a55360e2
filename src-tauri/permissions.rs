//! What the webview may use. Calls need the microphone, the camera and
//! screen capture, and only the app's own pages get them: a page the
//! webview were navigated to (a link, an injected frame) is refused
//! everything. On each platform the OS still asks the user once (usage
//! strings, entitlements, Android runtime permissions: see mobile/README.md).

use tauri::webview::{PermissionKind, PermissionResponse};
use tauri::Url;

/// The app's own pages: Tauri's custom protocol (`tauri://localhost` on
/// macOS, iOS and Linux; `http(s)://tauri.localhost` on Windows and
/// Android) and, in debug builds, the dev server's origin.
pub fn is_app_origin(url: &Url, dev_url: Option<&Url>) -> bool {
    let custom = match url.scheme() {
        "tauri" => url.host_str() == Some("localhost"),
        "http" | "https" => url.host_str() == Some("tauri.localhost"),
        _ => false,
    };
    custom || dev_url.is_some_and(|dev| cfg!(debug_assertions) && dev.origin() == url.origin())
}

/// The answer to one request of the page at `url`.
pub fn decide(kind: PermissionKind, url: Option<&Url>, dev_url: Option<&Url>) -> PermissionResponse {
    if !url.is_some_and(|u| is_app_origin(u, dev_url)) {
        return PermissionResponse::Deny;
    }
    match kind {
        PermissionKind::Microphone | PermissionKind::Camera | PermissionKind::DisplayCapture => {
            PermissionResponse::Allow
        }
        // The ringtone and the other side's voice play without a click.
        PermissionKind::Autoplay => PermissionResponse::Allow,
        // Notifications are the native plugin's; the page needs nothing else.
        _ => PermissionResponse::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_apps_own_pages_get_the_microphone_camera_and_screen() {
        for own in ["tauri://localhost/", "http://tauri.localhost/index.html", "https://tauri.localhost/"] {
            for kind in [PermissionKind::Microphone, PermissionKind::Camera, PermissionKind::DisplayCapture] {
                assert!(matches!(decide(kind, Some(&url(own)), None), PermissionResponse::Allow), "{own} {kind}");
            }
            assert!(matches!(decide(PermissionKind::Geolocation, Some(&url(own)), None), PermissionResponse::Deny));
        }
        for foreign in [
            "https://example.com/",
            "http://tauri.localhost.evil.com/",
            "https://evil.com/?tauri.localhost",
            "tauri://evil/",
            "file:///tmp/page.html",
            "http://localhost:5173/",
        ] {
            assert!(
                matches!(decide(PermissionKind::Microphone, Some(&url(foreign)), None), PermissionResponse::Deny),
                "{foreign}"
            );
        }
        assert!(matches!(decide(PermissionKind::Camera, None, None), PermissionResponse::Deny));
        // The dev server is the app's page in a debug build only.
        let dev = url("http://localhost:5173");
        let allowed = matches!(
            decide(PermissionKind::Microphone, Some(&url("http://localhost:5173/")), Some(&dev)),
            PermissionResponse::Allow
        );
        assert_eq!(allowed, cfg!(debug_assertions));
        assert!(matches!(
            decide(PermissionKind::Microphone, Some(&url("http://localhost:5174/")), Some(&dev)),
            PermissionResponse::Deny
        ));
    }
}
