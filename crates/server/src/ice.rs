//! ICE servers handed to calls: STUN as configured, and TURN with
//! short-lived credentials in coturn's REST scheme (`use-auth-secret`):
//! username `<expiry, Unix seconds>:<user id>`, password
//! base64(HMAC-SHA1(secret, username)). The TURN server checks them with
//! the same secret, so nothing is stored and a leaked credential expires.
//!
//! The default is neither STUN nor TURN: calls between devices on one
//! network (or loopback) need none. See the README for coturn.

use base64::Engine;
use confab_protocol::{IceServer, UserId};
use hmac::{Hmac, Mac};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct IceConfig {
    /// `stun:host:port` URLs.
    pub stun: Vec<String>,
    /// `turn:host:port?transport=udp` URLs, used with `turn_secret`.
    pub turn: Vec<String>,
    pub turn_secret: Option<String>,
    /// How long a TURN credential lives.
    pub turn_ttl: Duration,
}

/// The password for a TURN REST username.
pub fn turn_credential(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl IceConfig {
    /// The servers for `user`'s call, with credentials valid from `now`.
    pub fn servers_for(&self, user: UserId, now: SystemTime) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun.is_empty() {
            out.push(IceServer { urls: self.stun.clone(), username: None, credential: None });
        }
        if let (false, Some(secret)) = (self.turn.is_empty(), &self.turn_secret) {
            let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + self.turn_ttl;
            let username = format!("{}:{user}", expiry.as_secs());
            let credential = turn_credential(secret, &username);
            out.push(IceServer { urls: self.turn.clone(), username: Some(username), credential: Some(credential) });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturns_rest_scheme() {
        // Computed independently (Python's hmac + hashlib.sha1 + base64).
        let username = "1795953600:01a2271b-9aed-74a8-98eb-eb76d83bdca6";
        assert_eq!(turn_credential("north", username), "VHMOKdObs1h5sZWV+wxTBkoHlmU=");
        let user: UserId = "01a2271b-9aed-74a8-98eb-eb76d83bdca6".parse().expect("uuid");
        let config = IceConfig {
            stun: vec!["stun:127.0.0.1:3478".into()],
            turn: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
            turn_ttl: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1795953600 - 3600);
        let servers = config.servers_for(user, now);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].username.as_deref(), Some(username));
        assert_eq!(servers[1].credential.as_deref(), Some("VHMOKdObs1h5sZWV+wxTBkoHlmU="));
        assert!(IceConfig::default().servers_for(user, now).is_empty());
    }
}
