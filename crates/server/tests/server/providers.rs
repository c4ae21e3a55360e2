//! Stand-ins for the push providers, on loopback over HTTPS (HTTP/2 where
//! the provider requires it), each enforcing the provider's documented
//! contract: FCM's OAuth JWT-bearer exchange and `messages:send`, APNs'
//! path, headers, ES256 provider token and HTTP/2, and WebPush's VAPID and
//! aes128gcm body, which the stand-in decrypts with the device's keys
//! (RFC 8291, written out here apart from the server's library).
//!
//! Anything off-contract is answered as the provider would (400/403) and
//! recorded in `violations`, which every test checks is empty.
//!
//! The client core's tests include this file too (`#[path]`), to wake a
//! device through a real push.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PROJECT: &str = "confab-test";
pub const CLIENT_EMAIL: &str = "pusher@confab-test.iam.gserviceaccount.com";
pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "app.confab.test";
pub const VAPID_SUBJECT: &str = "mailto:ops@confab.test";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// One request a stand-in accepted.
#[derive(Clone, Debug)]
pub struct Got {
    /// `fcm`, `apns` or `up`.
    pub provider: &'static str,
    /// The device: FCM token, APNs token, or UnifiedPush endpoint id.
    pub device: String,
    pub headers: HeaderMap,
    /// The JSON body; for WebPush the decrypted one.
    pub body: Value,
    /// The raw body as sent (encrypted for WebPush).
    pub raw: Vec<u8>,
    /// What was answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    got: Vec<Got>,
    violations: Vec<String>,
    /// Answers to give, per provider, before the default success.
    script: HashMap<&'static str, VecDeque<(u16, String)>>,
    access_tokens: Vec<String>,
    token_exchanges: usize,
    /// UnifiedPush devices: endpoint id → (private key, auth secret).
    devices: HashMap<String, (p256::SecretKey, [u8; 16])>,
}

pub struct Providers {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    /// The files the confab server is configured with.
    pub ca: PathBuf,
    pub service_account: PathBuf,
    pub apns_key: PathBuf,
    pub vapid_key: PathBuf,
    _dir: tempfile::TempDir,
}

struct Keys {
    fcm: DecodingKey,
    apns: DecodingKey,
}

#[derive(Clone)]
struct Ctx {
    inner: Arc<Mutex<Inner>>,
    keys: Arc<Keys>,
    url: String,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private CA and a certificate it issued for localhost and 127.0.0.1,
/// as PEM files in `dir`: (ca, cert, key).
pub fn private_ca(dir: &FsPath) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Confab push test CA");
    let ca = ca.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("leaf");
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, leaf.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

fn new_p256(path: &FsPath) -> p256::SecretKey {
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    std::fs::write(path, key.to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes()).expect("write");
    key
}

impl Providers {
    pub async fn start() -> Providers {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = private_ca(dir.path());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://127.0.0.1:{}", tcp.local_addr().expect("addr").port());
        // Read relative to this file: the core's tests share this module.
        let rsa = include_str!("fixtures/fcm-test-key.pem");
        let service_account = dir.path().join("service-account.json");
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "k1",
            "private_key": rsa,
            "client_email": CLIENT_EMAIL,
            "token_uri": format!("{url}/token"),
        });
        std::fs::write(&service_account, account.to_string()).expect("write");
        let apns_key = dir.path().join("AuthKey_ABC123DEFG.p8");
        let apns = new_p256(&apns_key);
        let vapid_key = dir.path().join("vapid.pem");
        new_p256(&vapid_key);
        let keys = Keys {
            fcm: DecodingKey::from_rsa_pem(include_bytes!("fixtures/fcm-test-key.pub.pem")).expect("rsa public"),
            apns: DecodingKey::from_ec_pem(
                apns.public_key().to_public_key_pem(LineEnding::LF).expect("pem").as_bytes(),
            )
            .expect("ec public"),
        };
        let inner = Arc::new(Mutex::new(Inner::default()));
        let ctx = Ctx { inner: inner.clone(), keys: Arc::new(keys), url: url.clone() };
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/messages:send", post(fcm_send))
            .route("/3/device/{token}", post(apns_send))
            .route("/up/{id}", post(up_send))
            .with_state(ctx);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("tls");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = confab_server::tls::TlsListener::new(tcp, Arc::new(tls)).expect("listener");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Providers { url, inner, ca, service_account, apns_key, vapid_key, _dir: dir }
    }

    /// The server's push configuration for these stand-ins: quick
    /// collapsing and retries, so tests are short.
    pub fn config(&self) -> confab_server::push::PushConfig {
        use confab_server::push::*;
        PushConfig {
            fcm: Some(fcm::FcmConfig { service_account: self.service_account.clone(), url: self.url.clone() }),
            apns: Some(apns::ApnsConfig {
                key: self.apns_key.clone(),
                key_id: KEY_ID.into(),
                team_id: TEAM_ID.into(),
                topic: TOPIC.into(),
                url: Some(self.url.clone()),
            }),
            webpush: Some(webpush::WebPushConfig {
                vapid_key: self.vapid_key.clone(),
                subject: VAPID_SUBJECT.into(),
                allow_private: true,
            }),
            extra_root: Some(self.ca.clone()),
            collapse: Duration::from_millis(300),
            quiet: Duration::from_secs(30),
            retry_base: Duration::from_millis(50),
            retries: 3,
        }
    }

    /// A new UnifiedPush device: (endpoint, p256dh, auth) to register.
    pub fn unifiedpush_device(&self) -> (String, String, String) {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let auth: [u8; 16] = rand::random();
        let public = key.public_key().to_encoded_point(false);
        let p256dh = b64().encode(public.as_bytes());
        lock(&self.inner).devices.insert(id.clone(), (key, auth));
        (format!("{}/up/{id}", self.url), p256dh, b64().encode(auth))
    }

    /// Answers the next requests to `provider` with these, in order.
    pub fn script(&self, provider: &'static str, answers: &[(u16, &str)]) {
        let mut inner = lock(&self.inner);
        let queue = inner.script.entry(provider).or_default();
        queue.extend(answers.iter().map(|(s, b)| (*s, (*b).to_owned())));
    }

    pub fn got(&self) -> Vec<Got> {
        lock(&self.inner).got.clone()
    }

    /// Requests to `provider` for `device`.
    pub fn got_for(&self, provider: &str, device: &str) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.provider == provider && g.device == device).collect()
    }

    pub fn token_exchanges(&self) -> usize {
        lock(&self.inner).token_exchanges
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner).violations.clone()
    }

    /// Waits until `n` requests to `provider` for `device` arrived.
    pub async fn wait_for(&self, provider: &str, device: &str, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.got_for(provider, device);
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} pushes to {provider} {device} expected, got {}; violations: {:?}",
                got.len(),
                self.violations()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Ctx {
    fn violation(&self, what: String) -> Response {
        lock(&self.inner).violations.push(what.clone());
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": what}))).into_response()
    }

    /// Records a request and gives the scripted (or successful) answer.
    fn answer(
        &self,
        provider: &'static str,
        device: String,
        headers: HeaderMap,
        body: Value,
        raw: Vec<u8>,
        ok: u16,
    ) -> Response {
        let mut inner = lock(&self.inner);
        let (status, text) = inner.script.get_mut(provider).and_then(|q| q.pop_front()).unwrap_or((ok, "{}".into()));
        inner.got.push(Got { provider, device, headers, body, raw, status });
        let mut response = (StatusCode::from_u16(status).expect("status"), text).into_response();
        if status == 429 {
            response.headers_mut().insert("retry-after", "0".parse().expect("header"));
        }
        response
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// FCM's OAuth 2 token endpoint: the JWT-bearer grant (RFC 7523) as
/// Google documents it for service accounts.
async fn token(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    if !header(&headers, "content-type").starts_with("application/x-www-form-urlencoded") {
        return ctx.violation("token: not a form".into());
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return ctx.violation(format!("token: grant_type {:?}", form.get("grant_type")));
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[format!("{}/token", ctx.url)]);
    v.set_issuer(&[CLIENT_EMAIL]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims =
        match jsonwebtoken::decode::<Value>(form.get("assertion").map_or("", String::as_str), &ctx.keys.fcm, &v) {
            Ok(data) => data.claims,
            Err(e) => return ctx.violation(format!("token: assertion does not verify: {e}")),
        };
    if claims["scope"] != confab_server::push::fcm::SCOPE {
        return ctx.violation(format!("token: scope {}", claims["scope"]));
    }
    let life = claims["exp"].as_u64().unwrap_or(0).saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    if life > 3600 {
        return ctx.violation(format!("token: asks for {life} s (at most 3600)"));
    }
    let mut inner = lock(&ctx.inner);
    inner.token_exchanges += 1;
    let access = format!("ya29.test-{}", inner.token_exchanges);
    inner.access_tokens.push(access.clone());
    axum::Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

/// FCM HTTP v1 `messages:send`.
async fn fcm_send(State(ctx): State<Ctx>, Path(project): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let bearer = header(&headers, "authorization").strip_prefix("Bearer ").unwrap_or("").to_owned();
    if !lock(&ctx.inner).access_tokens.contains(&bearer) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#).into_response();
    }
    if project != PROJECT {
        return ctx.violation(format!("fcm: project {project}"));
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else { return ctx.violation("fcm: body is not JSON".into()) };
    let message = &json["message"];
    let Some(token) = message["token"].as_str() else { return ctx.violation("fcm: no message.token".into()) };
    if message.get("notification").is_some() || message["android"].get("notification").is_some() {
        return ctx.violation("fcm: not data-only".into());
    }
    let Some(data) = message["data"].as_object() else { return ctx.violation("fcm: no data".into()) };
    // FCM data values are strings, and all of them at most 4 KB.
    if data.values().any(|v| !v.is_string()) || body.len() > 4096 {
        return ctx.violation("fcm: data values must be strings, under 4 KB".into());
    }
    if !matches!(message["android"]["priority"].as_str(), Some("HIGH" | "NORMAL")) {
        return ctx.violation(format!("fcm: android.priority {}", message["android"]["priority"]));
    }
    ctx.answer("fcm", token.to_owned(), headers, json.clone(), body.to_vec(), 200)
}

/// APNs: `POST /3/device/<token>` over HTTP/2 with a provider token.
async fn apns_send(
    State(ctx): State<Ctx>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version != Version::HTTP_2 {
        return ctx.violation(format!("apns: {version:?}, APNs speaks HTTP/2 only"));
    }
    let jwt = header(&headers, "authorization").strip_prefix("bearer ").unwrap_or("");
    let kid = jsonwebtoken::decode_header(jwt).ok().and_then(|h| h.kid);
    if kid.as_deref() != Some(KEY_ID) {
        return (StatusCode::FORBIDDEN, r#"{"reason":"InvalidProviderToken"}"#).into_response();
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[TEAM_ID]);
    v.set_required_spec_claims(&["iss", "iat"]);
    v.validate_exp = false;
    let claims = match jsonwebtoken::decode::<Value>(jwt, &ctx.keys.apns, &v) {
        Ok(d) => d.claims,
        Err(e) => return ctx.violation(format!("apns: provider token does not verify: {e}")),
    };
    let age = jsonwebtoken::get_current_timestamp() as i64 - claims["iat"].as_i64().unwrap_or(0);
    if !(-60..3600).contains(&age) {
        return (StatusCode::FORBIDDEN, r#"{"reason":"ExpiredProviderToken"}"#).into_response();
    }
    let (kind, priority, topic) =
        (header(&headers, "apns-push-type"), header(&headers, "apns-priority"), header(&headers, "apns-topic"));
    let expected_topic = if kind == "voip" { format!("{TOPIC}.voip") } else { TOPIC.to_owned() };
    if topic != expected_topic {
        return ctx.violation(format!("apns: topic {topic} for a {kind} push"));
    }
    // Background pushes must be priority 5; alert and VoIP 10 (or 5).
    match (kind, priority) {
        ("alert" | "voip", "10" | "5") | ("background", "5") => {}
        _ => return ctx.violation(format!("apns: push type {kind:?} with priority {priority:?}")),
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (StatusCode::BAD_REQUEST, r#"{"reason":"BadDeviceToken"}"#).into_response();
    }
    let limit = if kind == "voip" { 5120 } else { 4096 };
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return ctx.violation("apns: body is not JSON".into());
    };
    if body.len() > limit {
        return (StatusCode::PAYLOAD_TOO_LARGE, r#"{"reason":"PayloadTooLarge"}"#).into_response();
    }
    if kind == "background" && json["aps"]["content-available"] != 1 {
        return ctx.violation("apns: a background push without content-available".into());
    }
    ctx.answer("apns", token, headers, json, body.to_vec(), 200)
}

/// A UnifiedPush endpoint (RFC 8030 + 8291 + 8292).
async fn up_send(State(ctx): State<Ctx>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((key, auth)) = lock(&ctx.inner).devices.get(&id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if header(&headers, "content-encoding") != "aes128gcm" {
        return ctx.violation("up: content-encoding is not aes128gcm".into());
    }
    if header(&headers, "ttl").parse::<u64>().is_err() {
        return ctx.violation("up: no TTL".into());
    }
    if body.len() > 4096 {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    // VAPID: `vapid t=<jwt>, k=<public key>`, the JWT for this origin.
    let vapid = header(&headers, "authorization");
    let parts: HashMap<&str, &str> =
        vapid.strip_prefix("vapid ").unwrap_or("").split(',').filter_map(|p| p.trim().split_once('=')).collect();
    let (Some(t), Some(k)) = (parts.get("t"), parts.get("k")) else {
        return ctx.violation(format!("up: Authorization {vapid:?} is not VAPID"));
    };
    let Some(public) = b64().decode(k).ok().and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok()) else {
        return ctx.violation("up: VAPID k is not a P-256 key".into());
    };
    let public =
        DecodingKey::from_ec_pem(public.to_public_key_pem(LineEnding::LF).expect("pem").as_bytes()).expect("key");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[ctx.url.as_str()]);
    v.set_required_spec_claims(&["aud", "exp", "sub"]);
    let claims = match jsonwebtoken::decode::<Value>(t, &public, &v) {
        Ok(d) => d.claims,
        Err(e) => return ctx.violation(format!("up: VAPID JWT does not verify: {e}")),
    };
    // RFC 8292: exp at most 24 hours ahead.
    if claims["exp"].as_u64().unwrap_or(0) > jsonwebtoken::get_current_timestamp() + 24 * 3600 {
        return ctx.violation("up: VAPID exp more than 24 h ahead".into());
    }
    let plain = match decrypt(&body, &key, &auth) {
        Ok(p) => p,
        Err(e) => return ctx.violation(format!("up: cannot decrypt: {e}")),
    };
    let Ok(json) = serde_json::from_slice::<Value>(&plain) else {
        return ctx.violation("up: plaintext is not JSON".into());
    };
    ctx.answer("up", id, headers, json, body.to_vec(), 201)
}

/// RFC 8291 decryption, as the user agent does it: one aes128gcm record.
fn decrypt(body: &[u8], key: &p256::SecretKey, auth: &[u8; 16]) -> Result<Vec<u8>, String> {
    use aes_gcm::aead::{Aead, KeyInit};
    // RFC 8188 header: salt (16) | record size (4) | idlen (1) | keyid.
    if body.len() < 21 {
        return Err("shorter than a header".into());
    }
    let (salt, rs, idlen) =
        (&body[..16], u32::from_be_bytes([body[16], body[17], body[18], body[19]]), body[20] as usize);
    if idlen != 65 || body.len() < 21 + idlen {
        return Err(format!("keyid of {idlen} bytes, not a P-256 point"));
    }
    let sender = p256::PublicKey::from_sec1_bytes(&body[21..21 + idlen]).map_err(|e| e.to_string())?;
    let ciphertext = &body[21 + idlen..];
    if ciphertext.len() > rs as usize {
        return Err("more than one record".into());
    }
    let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), sender.as_affine());
    // key_info = "WebPush: info" 0x00 ua_public as_public
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(key.public_key().to_encoded_point(false).as_bytes());
    info.extend_from_slice(sender.to_encoded_point(false).as_bytes());
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|e| e.to_string())?;
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
    let mut plain = cipher.decrypt(&nonce.into(), ciphertext).map_err(|_| "authentication failed".to_owned())?;
    // The last record ends with the delimiter 0x02, then zero padding.
    while plain.last() == Some(&0) {
        plain.pop();
    }
    match plain.pop() {
        Some(2) => Ok(plain),
        other => Err(format!("last record delimiter {other:?}, not 2")),
    }
}
