//! Where the session token is kept.
//!
//! By default it sits in the profile's cache (a directory only its user can
//! read). An app passes a [`SecretStore`] backed by the OS keychain instead;
//! then the cache holds no token at all. If the keychain refuses (no Secret
//! Service running, say), the token falls back to the profile, with a warning.

use std::sync::Arc;

/// A place for secrets, keyed by a string. Calls may block (keychains do);
/// the core makes them on the blocking thread pool.
pub trait SecretStore: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<String>, String>;
    fn set(&self, key: &str, secret: &str) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// Marks a session whose token is in the secret store.
pub(crate) const IN_SECRET_STORE: &str = "";

pub(crate) fn key(server: &str, username: &str) -> String {
    format!("{username}@{server}")
}

pub(crate) async fn run<T: Send + 'static>(
    store: &Arc<dyn SecretStore>,
    f: impl FnOnce(&dyn SecretStore) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref())).await.map_err(|e| e.to_string())?
}
