//! The server over real loopback sockets and a real SQLite file: protocol,
//! authorization, resume and limits, spoken as raw frames.

mod auth;
mod calls;
mod integrity;
mod limits;
mod media;
mod protocol;
mod store;
mod support;
