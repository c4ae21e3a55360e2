//! Calls: the one home of call logic in the core.
//!
//! - [`machine`]: one device's view of a 1:1 call as a pure state machine.
//! - [`engine`]: the media seam ([`MediaEngine`]), with the webview's side
//!   ([`ExternalEngine`]).
//! - [`native`] (feature `native-calls`): the native engine on the `webrtc`
//!   crate, Opus and cpal, for Linux desktops, the CLI and bots.
//! - `manager`: the task that runs this device's call, started with the
//!   client (see [`crate::Client::call`]).

pub mod engine;
pub mod machine;
pub(crate) mod manager;
#[cfg(feature = "native-calls")]
pub mod native;

pub use engine::{ExternalEngine, ExternalMedia, MediaEngine, MediaEvent, MediaParams, MediaSession, SelectedEngine};
pub use machine::{step, Action, CallInput, CallState, Ending};

/// The sound devices there are, by name (what the native engine's
/// `AudioInput::NamedDevice` and `AudioOutput::NamedDevice` take). Outside
/// the native engine, so that builds without it (the phones) answer the
/// same question with an empty list.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, specta::Type)]
pub struct AudioDevices {
    pub microphones: Vec<String>,
    pub speakers: Vec<String>,
}
