//! Apple Push Notification service: HTTP/2 with token authentication.
//!
//! Every request carries an ES256 JWT (`kid`: the key's id, `iss`: the
//! team id, `iat`), signed with the `.p8` key from the developer account.
//! APNs refuses a token older than an hour and one renewed more often than
//! every 20 minutes, so it is renewed after [`RENEW_AFTER`].
//!
//! - Messages: an `alert` push, priority 10, `mutable-content` set, so the
//!   app's Notification Service Extension catches up and replaces the
//!   placeholder with what it read; bursts share an `apns-collapse-id`.
//! - Other changes: a `background` push (`content-available`), priority 5
//!   as APNs requires for those.
//! - Calls: a `voip` push to the PushKit token (topic `<bundle>.voip`),
//!   priority 10; the app must report it to CallKit. A device without a
//!   PushKit token gets an alert instead.

use super::fcm::clip;
use super::{retry_after, transient, Delivery, Pusher};
use async_trait::async_trait;
use confab_protocol::{ApnsEnvironment, PushTarget, Wake, WakeKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// Between APNs' 20-minute floor and its one-hour limit.
const RENEW_AFTER: Duration = Duration::from_secs(40 * 60);

#[derive(Clone, Debug)]
pub struct ApnsConfig {
    /// The signing key (`AuthKey_XXXXXXXXXX.p8`, PKCS #8 PEM).
    pub key: PathBuf,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (the topic of alert and background pushes).
    pub topic: String,
    /// Both environments' address, instead of Apple's (tests).
    pub url: Option<String>,
}

pub struct Apns {
    http: reqwest::Client,
    key: jsonwebtoken::EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    url: Option<String>,
    jwt: std::sync::Mutex<Option<(String, Instant)>>,
}

impl Apns {
    pub fn new(config: &ApnsConfig, root: Option<&PathBuf>) -> anyhow::Result<Apns> {
        let pem =
            std::fs::read(&config.key).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config.key.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not an APNs signing key (PKCS #8 P-256): {e}", config.key.display()))?;
        Ok(Apns {
            http: super::http_client(root, true)?,
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            topic: config.topic.clone(),
            url: config.url.clone(),
            jwt: Default::default(),
        })
    }

    fn jwt(&self) -> Result<String, Delivery> {
        let mut cached = self.jwt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((jwt, made)) = cached.as_ref() {
            if made.elapsed() < RENEW_AFTER {
                return Ok(jwt.clone());
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = serde_json::json!({ "iss": self.team_id, "iat": jsonwebtoken::get_current_timestamp() });
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Delivery::Failed(format!("cannot sign the provider token: {e}")))?;
        *cached = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    fn forget_jwt(&self) {
        *self.jwt.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One APNs request: device token, headers and JSON payload.
pub struct Request {
    pub token: String,
    pub topic: String,
    pub push_type: &'static str,
    pub priority: &'static str,
    pub collapse_id: Option<&'static str>,
    pub payload: serde_json::Value,
}

/// What to send for `wake` to a device with these tokens.
pub fn request(topic: &str, token: &str, voip_token: Option<&str>, wake: &Wake) -> Request {
    let confab = serde_json::to_value(wake).unwrap_or_default();
    match (wake.kind, voip_token) {
        (WakeKind::Call, Some(voip)) => Request {
            token: voip.to_owned(),
            topic: format!("{topic}.voip"),
            push_type: "voip",
            priority: "10",
            collapse_id: None,
            payload: serde_json::json!({ "confab": confab }),
        },
        (WakeKind::Message | WakeKind::Call, _) => Request {
            token: token.to_owned(),
            topic: topic.to_owned(),
            push_type: "alert",
            priority: "10",
            collapse_id: (wake.kind == WakeKind::Message).then_some("confab"),
            // A placeholder, never content: the extension replaces it.
            payload: serde_json::json!({
                "aps": {
                    "alert": { "title": "Confab", "body": if wake.kind == WakeKind::Call { "Incoming call" } else { "New message" } },
                    "mutable-content": 1,
                    "sound": "default",
                    "thread-id": wake.conversation.map(|c| c.to_string()).unwrap_or_default(),
                },
                "confab": confab,
            }),
        },
        (WakeKind::Update, _) => Request {
            token: token.to_owned(),
            topic: topic.to_owned(),
            push_type: "background",
            priority: "5",
            collapse_id: Some("confab-update"),
            payload: serde_json::json!({ "aps": { "content-available": 1 }, "confab": confab }),
        },
    }
}

#[async_trait]
impl Pusher for Apns {
    fn name(&self) -> &'static str {
        "apns"
    }

    async fn push(&self, target: &PushTarget, wake: &Wake) -> Delivery {
        let PushTarget::Apns { token, voip_token, environment } = target else {
            return Delivery::Failed("not an APNs target".into());
        };
        let jwt = match self.jwt() {
            Ok(j) => j,
            Err(d) => return d,
        };
        let req = request(&self.topic, token, voip_token.as_deref(), wake);
        let base = match (&self.url, environment) {
            (Some(url), _) => url.as_str(),
            (None, ApnsEnvironment::Production) => PRODUCTION_URL,
            (None, ApnsEnvironment::Sandbox) => SANDBOX_URL,
        };
        let expiration = jsonwebtoken::get_current_timestamp() + super::ttl(wake).as_secs();
        let mut builder = self
            .http
            .post(format!("{}/3/device/{}", base.trim_end_matches('/'), req.token))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &req.topic)
            .header("apns-push-type", req.push_type)
            .header("apns-priority", req.priority)
            .header("apns-expiration", expiration.to_string())
            .json(&req.payload);
        if let Some(id) = req.collapse_id {
            builder = builder.header("apns-collapse-id", id);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Delivery::Retry { after: None, why: format!("send: {e}") },
        };
        let status = response.status();
        if status.is_success() {
            return Delivery::Sent;
        }
        let after = retry_after(&response);
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Delivery::Gone(reason),
            (403, "ExpiredProviderToken") => {
                self.forget_jwt();
                Delivery::Retry { after: Some(Duration::ZERO), why: reason }
            }
            (429 | 500..=599, _) => transient(status, after, &reason),
            _ => Delivery::Failed(format!("{status} {reason}: {}", clip(&body))),
        }
    }
}
