//! The server over real loopback sockets and a real store: protocol,
//! authorization, resume and limits, spoken as raw frames. The same tests
//! run on SQLite (the default) and on Postgres (`CONFAB_TEST_STORE=postgres`,
//! a fresh database per test): the store conformance suite.

mod auth;
mod calls;
mod integrity;
mod limits;
mod media;
mod protocol;
mod providers;
mod push;
mod store;
mod support;
