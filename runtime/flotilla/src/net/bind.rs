//! Where processes listen: bind addresses with default ports, and listeners that refuse to serve
//! beyond loopback without a cluster token, checked on the address actually bound.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// The host part of `host` or `host:port` (IPv6 in brackets).
pub fn host_of(bind: &str) -> &str {
    match bind.rsplit_once(':') {
        Some((h, port))
            if port.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => bind,
    }
}

/// `host` with `port`, unless it names a port already.
pub fn with_port(host: &str, port: u16) -> String {
    if host_of(host) != host {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Refuses `addr` for a process without a token unless it is a loopback address.
pub fn require_token_off_loopback(addr: SocketAddr, has_token: bool) -> Result<()> {
    if addr.ip().is_loopback() || has_token {
        return Ok(());
    }
    Err(Error::Config(format!(
        "refusing to listen on {addr} without a cluster token: set FLOTILLA_TOKEN (only loopback \
         addresses may run without one)"
    )))
}

/// Binds `bind` (`host:port`). Without a token only loopback is allowed: an address that parses
/// is checked before binding, so no other socket is opened even for a moment, and the address
/// actually bound is checked again (a name can resolve to any interface).
pub async fn listen(bind: &str, has_token: bool) -> Result<TcpListener> {
    if let Ok(addr) = bind.parse::<SocketAddr>() {
        require_token_off_loopback(addr, has_token)?;
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {bind}: {e}")))?;
    require_token_off_loopback(listener.local_addr()?, has_token)?;
    Ok(listener)
}

/// This host's name: objects on the same host move through shared memory.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_take_default_ports_and_keep_given_ones() {
        assert_eq!(with_port("10.0.0.7", 7402), "10.0.0.7:7402");
        assert_eq!(with_port("127.0.0.1:9000", 7402), "127.0.0.1:9000");
        assert_eq!(host_of("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("10.0.0.7"), "10.0.0.7");
        assert_eq!(host_of("[::1]:7400"), "[::1]");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(with_port("::1", 7400), "[::1]:7400");
        assert_eq!(with_port("[::1]:7400", 7402), "[::1]:7400");
    }
}
