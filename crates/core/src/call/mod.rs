//! Calls: the one home of call logic in the core. For now the state
//! machine ([`machine`]); the media engines (the webview's own WebRTC, and
//! a native one for Linux desktops and the CLI) plug in next behind a
//! `MediaEngine` seam.

pub mod machine;

pub use machine::{step, Action, CallInput, CallState, Ending};
