//! QUIC transport helpers (the `net` feature): endpoints with Sift's TLS and transport
//! settings, and frames over streams. Only bytes move here; decisions live in the pure crates.

mod framed;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use framed::{FrameReader, FrameWriter, NetError};

/// Keep-alive interval: idle connections stay up and dead peers are noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A connection with no traffic (keep-alives included) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent streams a peer may open of each kind (notifications are one uni stream per
/// subscription, so this bounds subscriptions per connection too).
pub const STREAMS_MAX: u32 = 10_000;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Infallible: 10 s is far below the varint limit.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(STREAMS_MAX.into());
    t.max_concurrent_uni_streams(STREAMS_MAX.into());
    Arc::new(t)
}

/// A server endpoint on `addr` (port 0 picks one) with `tls`.
pub fn server_endpoint(
    addr: SocketAddr,
    mut tls: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    tls.transport_config(transport());
    quinn::Endpoint::server(tls, addr)
}

/// A client endpoint bound to an ephemeral port, connecting with `tls`.
pub fn client_endpoint(mut tls: quinn::ClientConfig) -> std::io::Result<quinn::Endpoint> {
    tls.transport_config(transport());
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(tls);
    Ok(endpoint)
}

#[cfg(test)]
mod tests;
