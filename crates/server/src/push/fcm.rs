//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Auth is OAuth 2's JWT-bearer grant (RFC 7523): a JWT signed with the
//! service account's RSA key is exchanged at its `token_uri` for an access
//! token, cached until shortly before it expires. Messages are data-only
//! (the app's `FirebaseMessagingService` runs the catch-up and shows what
//! it read), `android.priority` HIGH for messages and calls.

use super::{retry_after, transient, Delivery, Pusher};
use async_trait::async_trait;
use confab_protocol::{PushTarget, Wake, WakeKind};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The scope FCM's send API needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const DEFAULT_URL: &str = "https://fcm.googleapis.com";
/// An access token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct FcmConfig {
    /// The service account's JSON key file (Firebase console → Project
    /// settings → Service accounts).
    pub service_account: PathBuf,
    /// Where `messages:send` is; [`DEFAULT_URL`] but for tests.
    pub url: String,
}

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: String,
}

pub struct Fcm {
    http: reqwest::Client,
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    send_url: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

impl Fcm {
    pub fn new(config: &FcmConfig, root: Option<&PathBuf>) -> anyhow::Result<Fcm> {
        let path = &config.service_account;
        let json = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let account: ServiceAccount = serde_json::from_str(&json)
            .map_err(|e| anyhow::anyhow!("{} is not a service account key: {e}", path.display()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| anyhow::anyhow!("the private key in {} does not parse: {e}", path.display()))?;
        let send_url = format!("{}/v1/projects/{}/messages:send", config.url.trim_end_matches('/'), account.project_id);
        Ok(Fcm { http: super::http_client(root, false)?, account, key, send_url, token: Default::default() })
    }

    /// A valid access token, fetching one when needed.
    async fn access_token(&self) -> Result<String, Delivery> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() + RENEW_BEFORE < *until {
                return Ok(token.clone());
            }
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.account.private_key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Delivery::Failed(format!("cannot sign the token request: {e}")))?;
        let response = self
            .http
            .post(&self.account.token_uri)
            .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| Delivery::Retry { after: None, why: format!("token exchange: {e}") })?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(transient(status, retry_after(&response), "token exchange"));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Delivery::Failed(format!("token exchange refused ({status}): {}", clip(&body))));
        }
        let reply: TokenReply = response
            .json()
            .await
            .map_err(|e| Delivery::Retry { after: None, why: format!("token exchange reply: {e}") })?;
        let until = Instant::now() + Duration::from_secs(reply.expires_in);
        *cached = Some((reply.access_token.clone(), until));
        Ok(reply.access_token)
    }
}

/// The first 300 bytes of a provider's error, for logs.
pub(crate) fn clip(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `messages:send` body for one wake-up.
pub fn message(token: &str, wake: &Wake) -> serde_json::Value {
    let high = super::is_urgent(wake);
    let mut android = serde_json::json!({
        "priority": if high { "HIGH" } else { "NORMAL" },
        "ttl": format!("{}s", super::ttl(wake).as_secs()),
    });
    // A burst waiting on the device's way collapses to the newest.
    if wake.kind != WakeKind::Call {
        android["collapse_key"] = "confab".into();
    }
    serde_json::json!({
        "message": {
            "token": token,
            "data": { "confab": serde_json::to_string(wake).unwrap_or_default() },
            "android": android,
        }
    })
}

#[async_trait]
impl Pusher for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    async fn push(&self, target: &PushTarget, wake: &Wake) -> Delivery {
        let PushTarget::Fcm { token } = target else { return Delivery::Failed("not an FCM target".into()) };
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(d) => return d,
        };
        let response = match self.http.post(&self.send_url).bearer_auth(access).json(&message(token, wake)).send().await
        {
            Ok(r) => r,
            Err(e) => return Delivery::Retry { after: None, why: format!("send: {e}") },
        };
        let status = response.status();
        if status.is_success() {
            return Delivery::Sent;
        }
        let after = retry_after(&response);
        let body = response.text().await.unwrap_or_default();
        match status.as_u16() {
            // UNREGISTERED: the app was uninstalled or the token rotated.
            404 => Delivery::Gone(format!("unregistered: {}", clip(&body))),
            // SENDER_ID_MISMATCH: a token of another Firebase project.
            403 if body.contains("SENDER_ID_MISMATCH") => Delivery::Gone("token of another project".into()),
            // INVALID_ARGUMENT about the token (our payload is fixed).
            400 if body.contains("registration token") || body.contains("\"INVALID_ARGUMENT\"") => {
                Delivery::Gone(format!("invalid token: {}", clip(&body)))
            }
            // The access token was revoked or expired early: fetch another.
            401 => {
                *self.token.lock().await = None;
                Delivery::Retry { after: Some(Duration::ZERO), why: "access token refused".into() }
            }
            429 | 500..=599 => transient(status, after, "send"),
            _ => Delivery::Failed(format!("send refused ({status}): {}", clip(&body))),
        }
    }
}
