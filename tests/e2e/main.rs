//! End-to-end tests: the real `confab-server` and `confab` processes on
//! loopback, real SQLite files, killed the hard way where the test says so.

mod calls;
mod chat;
mod cluster;
mod delivery;
mod files;
mod hardening;
mod webview_calls;
