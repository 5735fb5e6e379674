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
/// The QUIC error code a matcher resets a connection's notification stream with when a
/// subscription without credit ended as a slow consumer while the stream was blocked (the
/// client did not read it); the matcher goes on with a new stream, where the `Ended` frames
/// come.
pub const RESET_SLOW_CONSUMER: u32 = 1;

/// Most notification streams a server may have open to a client at once. A matcher writes
/// the notifications of all of a connection's subscriptions on one stream (a new one only
/// after resetting a blocked one), so a few are plenty.
pub const STREAMS_MAX: u32 = 64;
/// Bytes a server may have in flight to a client on its notification stream.
pub const CLIENT_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Most request streams a client may open to a server at once. The SDK uses one per matcher
/// connection, plus one per watch or admin request on the coordinator.
pub const SERVER_BIDI_STREAMS_MAX: u32 = 32;
/// Bytes a peer may have in flight to a server on one stream: room for one frame of the
/// largest size, so a frame never waits on a window update in the middle.
pub const SERVER_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Bytes a peer may have in flight to a server on one connection, all streams together: what
/// one connection can make a server buffer.
pub const SERVER_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

fn common_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Infallible: 10 s is far below the varint limit.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Servers (matchers, the coordinator) accept a few request streams and no uni streams, and
/// bound what a peer can make them buffer.
fn server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = common_transport();
    t.max_concurrent_bidi_streams(SERVER_BIDI_STREAMS_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(SERVER_STREAM_WINDOW.into());
    t.receive_window(SERVER_CONNECTION_WINDOW.into());
    Arc::new(t)
}

/// Clients accept the notification streams servers open, one per connection.
fn client_transport() -> Arc<quinn::TransportConfig> {
    let mut t = common_transport();
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(STREAMS_MAX.into());
    t.stream_receive_window(CLIENT_STREAM_WINDOW.into());
    Arc::new(t)
}

/// A server endpoint on `addr` (port 0 picks one) with `tls`.
pub fn server_endpoint(
    addr: SocketAddr,
    mut tls: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    tls.transport_config(server_transport());
    quinn::Endpoint::server(tls, addr)
}

/// A client endpoint bound to an ephemeral port, connecting with `tls`.
pub fn client_endpoint(mut tls: quinn::ClientConfig) -> std::io::Result<quinn::Endpoint> {
    tls.transport_config(client_transport());
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(tls);
    Ok(endpoint)
}

#[cfg(test)]
mod tests;
