//! The OS keychain as the core's [`SecretStore`]: Keychain Services on
//! macOS, Credential Manager on Windows, the Secret Service (GNOME Keyring,
//! KWallet) on Linux. Where there is none, the core falls back to the
//! profile and logs why.

use confab_core::SecretStore;

#[cfg(desktop)]
const SERVICE: &str = "app.confab.desktop";

pub struct Keychain;

#[cfg(desktop)]
impl SecretStore for Keychain {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        let entry = keyring::Entry::new(SERVICE, key).map_err(|e| e.to_string())?;
        match entry.get_password() {
            Ok(secret) => Ok(Some(secret)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set(&self, key: &str, secret: &str) -> Result<(), String> {
        let entry = keyring::Entry::new(SERVICE, key).map_err(|e| e.to_string())?;
        entry.set_password(secret).map_err(|e| e.to_string())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        let entry = keyring::Entry::new(SERVICE, key).map_err(|e| e.to_string())?;
        match entry.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Mobile keychains are not wired yet: refuse, so the core keeps the token
/// in the app's private profile directory.
#[cfg(mobile)]
impl SecretStore for Keychain {
    fn get(&self, _key: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
    fn set(&self, _key: &str, _secret: &str) -> Result<(), String> {
        Err("no keychain integration on this platform yet".into())
    }
    fn delete(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
}
