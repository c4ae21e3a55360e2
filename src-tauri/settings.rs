//! User settings, kept with tauri-plugin-store in `settings.json` beside
//! the profile: the app's data directory, or on iOS the App Group
//! container, where the push handlers read them.

use crate::shell::Shell;
use confab_protocol::ConversationId;
use serde::{Deserialize, Serialize};
use specta::Type;
use std::path::PathBuf;
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_store::StoreExt;

// Shared with the push handlers, which read them without the app running.
const FILE: &str = confab_mobile::SETTINGS_FILE;
const KEY: &str = confab_mobile::SETTINGS_KEY;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    #[default]
    System,
    Light,
    Dark,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
#[serde(default)]
pub struct Settings {
    pub server_url: String,
    pub theme: Theme,
    pub notifications: bool,
    pub sound: bool,
    pub muted: Vec<ConversationId>,
    /// Where the native engine carries calls: the microphone and speaker
    /// by name (none: the system's default).
    pub microphone: Option<String>,
    pub speaker: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: "http://127.0.0.1:7313".into(),
            theme: Theme::System,
            notifications: true,
            sound: true,
            muted: Vec::new(),
            microphone: None,
            speaker: None,
        }
    }
}

impl Settings {
    #[cfg(desktop)]
    pub fn audio_devices(
        &self,
    ) -> (confab_core::call::native::audio::AudioInput, confab_core::call::native::audio::AudioOutput) {
        use confab_core::call::native::audio::{AudioInput, AudioOutput};
        (
            self.microphone.clone().map_or(AudioInput::Device, AudioInput::NamedDevice),
            self.speaker.clone().map_or(AudioOutput::Device, AudioOutput::NamedDevice),
        )
    }

    pub fn notify_settings(&self) -> confab_core::notify::NotifySettings {
        confab_core::notify::NotifySettings {
            notifications: self.notifications,
            sound: self.sound,
            muted: self.muted.iter().copied().collect(),
        }
    }
}

/// Beside the profile, where the push handlers look (on iOS that is not
/// `app_data_dir()`, the store's default).
fn file<R: Runtime>(app: &AppHandle<R>) -> PathBuf {
    app.try_state::<Shell>().map(|s| s.root().join(FILE)).unwrap_or_else(|| FILE.into())
}

pub fn load<R: Runtime>(app: &AppHandle<R>) -> Settings {
    let stored = app.store(file(app)).ok().and_then(|s| s.get(KEY));
    stored.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
}

pub fn save<R: Runtime>(app: &AppHandle<R>, settings: &Settings) -> Result<(), String> {
    let store = app.store(file(app)).map_err(|e| e.to_string())?;
    store.set(KEY, serde_json::to_value(settings).map_err(|e| e.to_string())?);
    store.save().map_err(|e| e.to_string())
}
