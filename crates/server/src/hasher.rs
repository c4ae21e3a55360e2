//! Password hashing on a fixed pool, so it cannot be turned against the
//! server.
//!
//! argon2id is memory-hard by design: each hash needs ~19 MiB. Run on
//! tokio's blocking pool (up to 512 threads, each keeping what the
//! allocator gave it), a few hundred parallel logins for names that do not
//! even exist took a server to gigabytes. Here a fixed number of threads
//! (about one per core) each own **one** preallocated argon2 memory area,
//! reused for every hash, and take work from a short bounded queue. Memory
//! is therefore fixed at start — threads × 19 MiB — whatever the load, and
//! nothing is allocated per request. When the queue is full the request is
//! refused at once with `rate_limited` and a `retry_after_ms`, rather than
//! queued without bound.
//!
//! Parameters are argon2's defaults, OWASP's recommended minimum for
//! argon2id: m = 19 MiB, t = 2, p = 1.

use crate::error::{ApiError, Result};
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// A stored hash asking for more memory than this is refused (not
/// something this server wrote).
const MAX_MEMORY_KIB: u32 = 256 * 1024;

enum Job {
    Hash { password: String, reply: oneshot::Sender<Result<String>> },
    Verify { password: String, phc: String, reply: oneshot::Sender<Result<bool>> },
}

pub struct Hasher {
    queue: SyncSender<Job>,
    /// Roughly how long a queued job waits per position ahead of it.
    retry_after: Duration,
}

impl Hasher {
    /// `threads` workers, each with its own memory area, and room for
    /// `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Hasher> {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || worker(&rx))?;
        }
        // A hash takes some tens of milliseconds; a full queue drains in
        // about this long.
        let per_round = Duration::from_millis(60);
        let retry_after = per_round * (queue / threads + 1) as u32;
        Ok(Hasher { queue: tx, retry_after })
    }

    fn submit(&self, job: Job) -> Result<()> {
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ApiError {
                message: "the server is busy checking passwords; retry shortly".into(),
                ..ApiError::rate_limited(self.retry_after.as_millis() as u64)
            }),
            Err(TrySendError::Disconnected(_)) => Err(ApiError::internal("hasher", "no hashing threads")),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=…`) for a new password.
    pub async fn hash(&self, password: String) -> Result<String> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer.await.map_err(|e| ApiError::internal("hasher", e))?
    }

    /// Whether `password` matches the stored PHC string.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, phc, reply })?;
        answer.await.map_err(|e| ApiError::internal("hasher", e))?
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    let params = Params::default();
    // The one memory area this thread ever uses (grown only for a stored
    // hash with larger parameters, up to MAX_MEMORY_KIB).
    let mut blocks = vec![Block::default(); params.block_count()];
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // A request whose client is gone is not worth the work.
        match job {
            Job::Hash { reply, .. } if reply.is_closed() => {}
            Job::Verify { reply, .. } if reply.is_closed() => {}
            Job::Hash { password, reply } => {
                let _ = reply.send(hash(&password, &params, &mut blocks));
            }
            Job::Verify { password, phc, reply } => {
                let _ = reply.send(verify(&password, &phc, &mut blocks));
            }
        }
    }
}

fn hash(password: &str, params: &Params, blocks: &mut [Block]) -> Result<String> {
    let mut salt_bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ApiError::internal("salt", e))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon
        .hash_password_into_with_memory(password.as_bytes(), &salt_bytes, &mut out, &mut blocks[..params.block_count()])
        .map_err(|e| ApiError::internal("argon2 hash", e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params.try_into().map_err(|e| ApiError::internal("argon2 params", e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| ApiError::internal("argon2 output", e))?),
    };
    Ok(phc.to_string())
}

fn verify(password: &str, phc: &str, blocks: &mut Vec<Block>) -> Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| ApiError::internal("stored hash", e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| ApiError::internal("stored hash", e))?;
    let version =
        parsed.version.map(Version::try_from).transpose().map_err(|e| ApiError::internal("stored hash", e))?;
    let params = Params::try_from(&parsed).map_err(|e| ApiError::internal("stored hash", e))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(ApiError::internal("stored hash", "no salt or hash"));
    };
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(ApiError::internal("stored hash", "memory cost above the limit"));
    }
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| ApiError::internal("stored hash", e))?;
    let argon = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let mut out = vec![0u8; expected.len()];
    argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..params.block_count()])
        .map_err(|e| ApiError::internal("argon2 verify", e))?;
    // Output compares in constant time.
    Ok(Output::new(&out).map_err(|e| ApiError::internal("argon2 output", e))? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_protocol::ErrorCode;

    #[tokio::test]
    async fn hashes_verify_and_interoperate_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(1, 4).expect("threads");
        let phc = h.hash("correct horse".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify("correct horse".into(), phc.clone()).await.expect("verify"));
        assert!(!h.verify("wrong horse".into(), phc.clone()).await.expect("verify"));
        // Hashes written by the crate's own API (older databases) verify
        // here, and ours verify there.
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let theirs = Argon2::default().hash_password(b"old password", &salt).expect("hash").to_string();
        assert!(h.verify("old password".into(), theirs).await.expect("verify"));
        let parsed = PasswordHash::new(&phc).expect("parse");
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_not_queued() {
        let h = Arc::new(Hasher::new(1, 1).expect("threads"));
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(format!("password {i}")).await })
            })
            .collect();
        let mut refused = 0;
        for j in jobs {
            match j.await.expect("task") {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited);
                    assert!(e.retry_after_ms.is_some());
                    refused += 1;
                }
            }
        }
        assert!(refused >= 5, "{refused} of 8 refused with one thread and a queue of one");
    }
}
