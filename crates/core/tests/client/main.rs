//! The client core against an in-process server on a loopback port, with
//! real SQLite files for both.

mod basics;
mod files;
mod integrity;
mod support;
mod tls;
