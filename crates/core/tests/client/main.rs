//! The client core against an in-process server on a loopback port, with
//! real SQLite files for both.

mod basics;
mod files;
mod integrity;
// Shared with the server's tests, which use all of it.
#[allow(dead_code)]
#[path = "../../../server/tests/server/providers.rs"]
mod providers;
mod support;
mod tls;
mod wake;
