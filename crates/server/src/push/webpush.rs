//! UnifiedPush: a WebPush (RFC 8030) POST to the endpoint the device's
//! distributor handed it, encrypted for the device (RFC 8291, aes128gcm)
//! and signed by this server (VAPID, RFC 8292).
//!
//! The endpoint is a URL a client chose, so the server is careful where it
//! sends: https only, never to a private, loopback or link-local address
//! (checked at registration and again on every resolution), no redirects
//! followed, bodies at most [`MAX_BODY`] (UnifiedPush's limit), replies
//! not read. `allow_private` lifts the address rule for a distributor on
//! the local network (and tests).

use super::{retry_after, transient, Delivery, Pusher};
use async_trait::async_trait;
use base64::Engine as _;
use confab_protocol::{PushTarget, Wake, WakeKind};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The largest request body a UnifiedPush endpoint must take.
pub const MAX_BODY: usize = 4096;

#[derive(Clone, Debug)]
pub struct WebPushConfig {
    /// This server's VAPID key (P-256, PKCS #8 PEM).
    pub vapid_key: PathBuf,
    /// Who runs this server (`mailto:…` or `https://…`), for push services
    /// that need to reach the sender.
    pub subject: String,
    /// Push to private and loopback addresses too (a distributor on the
    /// local network; tests), and over plain http.
    pub allow_private: bool,
}

pub struct WebPush {
    http: reqwest::Client,
    key: jsonwebtoken::EncodingKey,
    /// The VAPID public key, uncompressed, base64url: the `k` of the header.
    public: String,
    subject: String,
    allow_private: bool,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Whether an address belongs to this machine or a private network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // Carrier-grade NAT, and "this network".
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names to public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl WebPush {
    pub fn new(config: &WebPushConfig, root: Option<&PathBuf>) -> anyhow::Result<WebPush> {
        let path = &config.vapid_key;
        let pem = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let secret = p256::SecretKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{} is not a VAPID key (PKCS #8 P-256): {e}", path.display()))?;
        let public = secret.public_key().to_encoded_point(false);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{} does not parse as a signing key: {e}", path.display()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(super::REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("confab-server/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly)).https_only(true);
        }
        if let Some(path) = root {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(WebPush {
            http: builder.build()?,
            key,
            public: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes()),
            subject: config.subject.clone(),
            allow_private: config.allow_private,
        })
    }

    /// A registered endpoint and keys: a URL this server may post to, and
    /// a P-256 point and 16-byte secret.
    pub fn check(&self, endpoint: &str, p256dh: &str, auth: &str) -> Result<(), &'static str> {
        let url = reqwest::Url::parse(endpoint).map_err(|_| "the endpoint is not a URL")?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            _ => return Err("the endpoint must be https"),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the endpoint must not carry credentials");
        }
        let ip = match url.host() {
            None => return Err("the endpoint has no host"),
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => Some(IpAddr::from([127, 0, 0, 1])),
            Some(url::Host::Domain(_)) => None,
        };
        if ip.is_some_and(is_private) && !self.allow_private {
            return Err("the endpoint is a private address");
        }
        let public = b64(p256dh).ok_or("p256dh is not base64url")?;
        p256::PublicKey::from_sec1_bytes(&public).map_err(|_| "p256dh is not a P-256 public key")?;
        match b64(auth) {
            Some(a) if a.len() == 16 => Ok(()),
            _ => Err("auth is not 16 bytes of base64url"),
        }
    }

    /// VAPID's `Authorization` for an endpoint: a JWT for its origin.
    fn vapid(&self, url: &reqwest::Url) -> Result<String, Delivery> {
        let origin = url.origin().ascii_serialization();
        let claims = serde_json::json!({
            "aud": origin,
            "exp": jsonwebtoken::get_current_timestamp() + 12 * 3600,
            "sub": self.subject,
        });
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &self.key)
            .map_err(|e| Delivery::Failed(format!("cannot sign VAPID: {e}")))?;
        Ok(format!("vapid t={jwt}, k={}", self.public))
    }
}

#[async_trait]
impl Pusher for WebPush {
    fn name(&self) -> &'static str {
        "unified_push"
    }

    async fn push(&self, target: &PushTarget, wake: &Wake) -> Delivery {
        let PushTarget::UnifiedPush { endpoint, p256dh, auth } = target else {
            return Delivery::Failed("not a UnifiedPush target".into());
        };
        if let Err(why) = self.check(endpoint, p256dh, auth) {
            return Delivery::Gone(why.into());
        }
        let (Some(public), Some(secret), Ok(url)) = (b64(p256dh), b64(auth), reqwest::Url::parse(endpoint)) else {
            return Delivery::Gone("unreadable target".into());
        };
        let Ok(public) = web_push_native::p256::PublicKey::from_sec1_bytes(&public) else {
            return Delivery::Gone("p256dh is not a P-256 public key".into());
        };
        let plain = serde_json::to_vec(wake).unwrap_or_default();
        let body = match web_push_native::encrypt(plain, &public, &web_push_native::Auth::clone_from_slice(&secret)) {
            Ok(b) if b.len() <= MAX_BODY => b,
            Ok(_) => return Delivery::Failed("the wake-up does not fit 4096 bytes".into()),
            Err(e) => return Delivery::Failed(format!("cannot encrypt: {e}")),
        };
        let vapid = match self.vapid(&url) {
            Ok(v) => v,
            Err(d) => return d,
        };
        let mut request = self
            .http
            .post(url)
            .header("authorization", vapid)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", super::ttl(wake).as_secs().to_string())
            .header("urgency", if super::is_urgent(wake) { "high" } else { "normal" })
            .body(body);
        // RFC 8030 topics: an undelivered wake-up is replaced by the newer
        // one, not queued beside it. A call is never replaced.
        if wake.kind != WakeKind::Call {
            request = request.header("topic", "confab");
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Delivery::Retry { after: None, why: format!("send: {e}") },
        };
        let status = response.status();
        match status.as_u16() {
            200..=299 => Delivery::Sent,
            404 | 410 => Delivery::Gone(format!("endpoint {status}")),
            300..=399 => Delivery::Failed(format!("endpoint redirects ({status}); not followed")),
            429 | 500..=599 => transient(status, retry_after(&response), "endpoint"),
            _ => Delivery::Failed(format!("endpoint refused: {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_private;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
    }
}
