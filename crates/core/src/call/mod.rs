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
