//! How often an address may try to sign in or create accounts.
//!
//! - Sign-in attempts are limited per (address, username) — password
//!   guessing slows down without letting anyone lock a user out from
//!   elsewhere — and per address overall, so fresh names buy nothing.
//! - Accounts created per address per hour are capped (configurable).
//! - Names are validated before they key anything, and idle keys are pruned
//!   every minute, so junk names cost no lasting memory.
//!
//! The address is the socket's peer, or with `--trust-proxy` the right-most
//! `X-Forwarded-For` entry (the one our own proxy appended). IPv6 addresses
//! count per /64, which is what one subscriber usually holds.

use crate::error::{ApiError, Result};
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

pub struct AuthGuard {
    login_by_name: DefaultKeyedRateLimiter<(IpAddr, String)>,
    login_by_address: DefaultKeyedRateLimiter<IpAddr>,
    register_by_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Coarser: a whole IPv4 /24 or IPv6 /48, so that an attacker with a
    /// block of addresses does not multiply the limits by its size.
    login_by_network: DefaultKeyedRateLimiter<IpAddr>,
    register_by_network: DefaultKeyedRateLimiter<IpAddr>,
    trust_proxy: bool,
}

/// The /24 (IPv4) or /48 (IPv6) an address belongs to.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.trim_start_matches('[').split(']').next().and_then(|h| h.parse().ok()))
}

/// A quota count, at least one.
pub(crate) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// `burst` at once, then one every `every`.
pub(crate) fn period(every: Duration, burst: u32) -> Quota {
    Quota::with_period(every).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(nz(burst))
}

/// The server's one translation of a limiter's "not until" into
/// `rate_limited` with the wait it names.
pub(crate) fn not_until(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> ApiError {
    let ms = not_until.wait_time_from(DefaultClock::default().now()).as_millis().max(1) as u64;
    ApiError { message: format!("too many requests; retry in {ms} ms"), ..ApiError::rate_limited(ms) }
}

/// Takes one token for `key`, or says when to retry.
pub(crate) fn check<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<()> {
    limiter.check_key(key).map_err(not_until)
}

impl AuthGuard {
    pub fn new(accounts_per_hour: u32, trust_proxy: bool) -> AuthGuard {
        AuthGuard {
            // 10 tries, then one every 6 s, per address and name.
            login_by_name: RateLimiter::keyed(period(Duration::from_secs(6), 10)),
            // 60 tries, then one a second, per address.
            login_by_address: RateLimiter::keyed(period(Duration::from_secs(1), 60)),
            register_by_address: RateLimiter::keyed(
                Quota::per_hour(nz(accounts_per_hour)).allow_burst(nz(accounts_per_hour)),
            ),
            // Ten times the single-address limits for a whole network.
            login_by_network: RateLimiter::keyed(period(Duration::from_millis(100), 600)),
            register_by_network: RateLimiter::keyed(
                Quota::per_hour(nz(accounts_per_hour.saturating_mul(10)))
                    .allow_burst(nz(accounts_per_hour.saturating_mul(10))),
            ),
            trust_proxy,
        }
    }

    /// The client's address, as this server may believe it.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        // The right-most entry of the last header line: the one our own
        // proxy appended (a client can write any earlier ones).
        let forwarded = self
            .trust_proxy
            .then(|| headers.get_all("x-forwarded-for").iter().next_back())
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(parse_forwarded);
        if self.trust_proxy && forwarded.is_none() {
            tracing::warn!("--trust-proxy is set but a request came without a usable X-Forwarded-For");
        }
        let ip = forwarded.unwrap_or(peer.ip());
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// A sign-in attempt for a (valid) username from `address`.
    pub fn check_login(&self, address: IpAddr, username: &str) -> Result<()> {
        check(&self.login_by_network, &network(address))?;
        check(&self.login_by_address, &address)?;
        check(&self.login_by_name, &(address, username.to_owned()))
    }

    /// An account about to be created from `address`.
    pub fn check_register(&self, address: IpAddr) -> Result<()> {
        check(&self.register_by_network, &network(address))?;
        check(&self.register_by_address, &address)
    }

    /// Forgets keys whose limits have fully recovered.
    pub fn prune(&self) {
        self.login_by_name.retain_recent();
        self.login_by_name.shrink_to_fit();
        self.login_by_address.retain_recent();
        self.login_by_address.shrink_to_fit();
        self.register_by_address.retain_recent();
        self.register_by_address.shrink_to_fit();
        self.login_by_network.retain_recent();
        self.login_by_network.shrink_to_fit();
        self.register_by_network.retain_recent();
        self.register_by_network.shrink_to_fit();
    }

    /// Keys held, for tests of pruning.
    pub fn keys(&self) -> usize {
        self.login_by_name.len()
            + self.login_by_address.len()
            + self.register_by_address.len()
            + self.login_by_network.len()
            + self.register_by_network.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().expect("header"));
        h
    }

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let open = AuthGuard::new(5, false);
        assert_eq!(open.client_address(peer, &headers("1.2.3.4")), peer.ip());
        let proxied = AuthGuard::new(5, true);
        assert_eq!(
            proxied.client_address(peer, &headers("6.6.6.6, 1.2.3.4")),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(proxied.client_address(peer, &headers("garbage")), peer.ip());
        assert_eq!(proxied.client_address(peer, &headers("1.2.3.4:5678")), "1.2.3.4".parse::<IpAddr>().expect("ip"));
        // With two header lines, the last one counts (the first may be the
        // client's own).
        let mut two = headers("6.6.6.6");
        two.append("x-forwarded-for", "5.5.5.5".parse().expect("header"));
        assert_eq!(proxied.client_address(peer, &two), "5.5.5.5".parse::<IpAddr>().expect("ip"));
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:1".parse().expect("addr");
        assert_eq!(open.client_address(v6, &HeaderMap::new()), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn guessing_from_one_address_does_not_lock_out_another() {
        let g = AuthGuard::new(5, false);
        let (attacker, user) = ("10.0.0.66".parse().expect("ip"), "10.0.0.1".parse().expect("ip"));
        let limited = (0..20).filter(|_| g.check_login(attacker, "alice").is_err()).count();
        assert!(limited >= 9);
        assert!(g.check_login(user, "alice").is_ok());
        let created = (0..10).filter(|_| g.check_register(attacker).is_ok()).count();
        assert_eq!(created, 5);
        assert!(g.check_register(user).is_ok());
    }
}
