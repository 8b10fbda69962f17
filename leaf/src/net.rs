//! QUIC between every pair of processes: endpoints with mutual TLS from the
//! cluster's CA, and length-prefixed frames on bidirectional streams.
//!
//! One connection per peer, one bidirectional stream per request: the
//! client writes a request frame and finishes its side; the server answers
//! with frames ending in a terminal message. Dropping the stream cancels the
//! request on both sides (the server's writes fail and it stops working).
//!
//! Packets are the cost of a small request on loopback (each send wakes a
//! process on the other core), so both sides keep them few: a stream's last
//! frames go out in one write right before it is finished, and a reader
//! consumes the end of every stream it is done with ([`read_end`]).
//!
//! Bulk data (an ingest's batches, big answers) goes in packets as large as
//! the path carries, up to [`UDP_PAYLOAD_BYTES_MAX`]: path-MTU discovery
//! grows them from 1,200 bytes, to that bound on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::{
    ClientConfig, Connection, Endpoint, EndpointConfig, MtuDiscoveryConfig, RecvStream, SendStream,
    ServerConfig, TransportConfig,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use scuba::wire::{decode_payload, encode_frame, encode_frame_into, frame_len, FRAME_PREFIX_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{LeafError, Result};

/// The name every node's certificate carries and every client checks, so a
/// cluster's certificates work whatever addresses its nodes have.
pub const SERVER_NAME: &str = "scuba-node";

const ALPN: &[u8] = b"scuba/1";

/// Concurrent requests one peer may have open on a connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// Receive and send buffer asked of the kernel for every QUIC socket (it
/// grants at most `net.core.rmem_max` / `wmem_max`). The default (about
/// 200 KiB) overflowed while a leaf waited for a core: on 2 busy cores,
/// about 5% of an ingest's datagrams were dropped (`RcvbufErrors` in
/// /proc/net/snmp), and each loss costs a retransmit and halves the
/// sender's congestion window.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// The largest UDP payload (one QUIC packet) a node sends or accepts.
/// Path-MTU discovery grows packets from 1,200 bytes up to this where the
/// path carries them (loopback, jumbo-frame networks) and stops at what a
/// usual Ethernet carries (about 1,450 to 1,472 bytes), whose larger probes
/// are lost. Fewer, larger packets cost less per byte: each packet is
/// built, encrypted, tracked and acknowledged on its own. The bound comes
/// from segmentation offload: quinn hands the kernel up to
/// [`DATAGRAMS_PER_SEND`] packets in one `sendmsg`, Linux refuses a send of
/// more than 64 KiB in all (EMSGSIZE), and quinn-udp counts a refused send
/// as sent, so every packet of it would be lost. (At 8,000 bytes, an ingest
/// of the 2M sample events had 1,871 of its 6,525 sends refused, `strace -f
/// -c -e trace=sendmsg scubactl ingest`, and took 14 s.)
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 6_500;

/// Packets quinn gives the kernel in one send at most (quinn 0.11's
/// `MAX_TRANSMIT_SEGMENTS`, not configurable).
pub const DATAGRAMS_PER_SEND: usize = 10;

/// A whole send (UDP header, IPv4 header and the packets) fits the 64 KiB
/// an IP datagram can hold.
const _: () = assert!(DATAGRAMS_PER_SEND * UDP_PAYLOAD_BYTES_MAX as usize + 8 + 20 <= 65_535);

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] buffers asked.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer still works.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(UDP_BUFFER_BYTES);
    Ok(socket)
}

/// A node's certificate files: the cluster CA, its own chain and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `scubactl cluster up` writes for `name` under `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> LeafError {
    LeafError::Net(format!("{what} {}: {e}", path.display()))
}

fn load(
    files: &TlsFiles,
) -> Result<(
    rustls::RootCertStore,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca_cert)
        .map_err(|e| tls_err("reading CA", &files.ca_cert, e))?
    {
        let cert = cert.map_err(|e| tls_err("parsing CA", &files.ca_cert, e))?;
        roots
            .add(cert)
            .map_err(|e| tls_err("adding CA", &files.ca_cert, e))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_err("reading certificate", &files.cert, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err("parsing certificate", &files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err("reading key", &files.key, e))?;
    Ok((roots, chain, key))
}

/// ring's suites with AES-128-GCM first: TLS 1.3's mandatory suite, and
/// its ten rounds cost less per byte than AES-256's fourteen.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn transport() -> Arc<TransportConfig> {
    Arc::new(transport_config())
}

fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Peers are usually on one network or machine: a lower first estimate
    // retries a lost handshake packet in tens of milliseconds, not a second.
    // It adapts to the measured round trip at once.
    t.initial_rtt(Duration::from_millis(20));
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("small")));
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(UDP_PAYLOAD_BYTES_MAX);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Endpoint settings that accept packets of up to [`UDP_PAYLOAD_BYTES_MAX`]
/// (a peer sends no larger than its peer accepts).
fn endpoint_config(mut config: EndpointConfig) -> EndpointConfig {
    config
        .max_udp_payload_size(UDP_PAYLOAD_BYTES_MAX)
        .expect("within QUIC's 1,200 to 65,527 bytes");
    config
}

/// A server endpoint that accepts only peers whose certificates the cluster
/// CA signed.
pub fn server_endpoint(addr: SocketAddr, files: &TlsFiles) -> Result<Endpoint> {
    let (roots, chain, key) = load(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| LeafError::Net(format!("client verifier: {e}")))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LeafError::Net(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| LeafError::Net(format!("server certificate: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| LeafError::Net(e.to_string()))?;
    let mut config = ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    let socket = udp_socket(addr).map_err(|e| LeafError::Net(format!("binding {addr}: {e}")))?;
    Endpoint::new(
        endpoint_config(EndpointConfig::new(reset_key(files)?)),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| LeafError::Net(format!("binding {addr}: {e}")))
}

/// The stateless-reset key, derived from the node's private key: a node
/// restarted on the same address (a new process) then resets connections
/// its predecessor held, so peers learn at their next packet that the old
/// connection is gone instead of waiting for it to time out.
fn reset_key(files: &TlsFiles) -> Result<Arc<dyn quinn::crypto::HmacKey>> {
    let key = std::fs::read(&files.key).map_err(|e| tls_err("reading key", &files.key, e))?;
    let mut material = b"scuba stateless reset v1".to_vec();
    material.extend_from_slice(&key);
    let digest = ring::digest::digest(&ring::digest::SHA256, &material);
    Ok(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        digest.as_ref(),
    )))
}

/// A client endpoint presenting this node's certificate.
pub fn client_endpoint(files: &TlsFiles) -> Result<Endpoint> {
    client_endpoint_with(
        files,
        transport(),
        endpoint_config(EndpointConfig::default()),
    )
}

/// A client endpoint for a connection that lives for one request (a
/// `scubactl query`): it does not probe for a larger packet size, which
/// cost four packets and their acknowledgements right after every
/// handshake and pays off only over many packets. It accepts no packets
/// over QUIC's usual 1,472 bytes either, so the server does not probe for
/// larger ones on its side.
pub fn brief_client_endpoint(files: &TlsFiles) -> Result<Endpoint> {
    let mut t = transport_config();
    t.mtu_discovery_config(None);
    client_endpoint_with(files, Arc::new(t), EndpointConfig::default())
}

fn client_endpoint_with(
    files: &TlsFiles,
    transport: Arc<TransportConfig>,
    endpoint: EndpointConfig,
) -> Result<Endpoint> {
    let (roots, chain, key) = load(files)?;
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LeafError::Net(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| LeafError::Net(format!("client certificate: {e}")))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| LeafError::Net(e.to_string()))?;
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    // Any local address, so peers on other machines are reachable: both
    // families where the system has IPv6, IPv4 alone where it has not.
    let socket = udp_socket("[::]:0".parse().expect("valid"))
        .or_else(|_| udp_socket("0.0.0.0:0".parse().expect("valid")))
        .map_err(|e| LeafError::Net(format!("client socket: {e}")))?;
    let mut endpoint = Endpoint::new(endpoint, None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| LeafError::Net(format!("client socket: {e}")))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

pub async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| LeafError::Net(format!("connecting to {addr}: {e}")))?;
    connecting
        .await
        .map_err(|e| LeafError::Net(format!("connecting to {addr}: {e}")))
}

/// Appends `message` to `out` as a frame, to send several frames in one
/// write.
pub fn push_frame<T: Serialize>(out: &mut Vec<u8>, message: &T) -> Result<()> {
    Ok(encode_frame_into(out, message)?)
}

/// Writes frames gathered with [`push_frame`].
pub async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<()> {
    send.write_all(bytes)
        .await
        .map_err(|e| LeafError::Net(format!("writing a frame: {e}")))
}

/// Writes a stream's last bytes and finishes it at once, so the end
/// usually leaves in the same packet as the data. (A write wakes the
/// connection; a finish that comes after an `await` often goes out in a
/// packet of its own, which the peer must receive and acknowledge.)
pub async fn write_last(send: &mut SendStream, bytes: &[u8]) -> Result<()> {
    write_bytes(send, bytes).await?;
    let _ = send.finish();
    Ok(())
}

/// Ends a reply: its last bytes are written with the stream's end, the
/// request's end is read (see [`read_end`]), and it returns once the peer
/// has the reply (or is gone).
pub async fn end_reply(send: &mut SendStream, recv: &mut RecvStream, last: &[u8]) -> Result<()> {
    write_last(send, last).await?;
    read_end(recv).await;
    let _ = send.stopped().await;
    Ok(())
}

/// How long a reader that has its answer waits for the peer's end of the
/// stream (usually already here, in the answer's last packet).
pub const STREAM_END_WAIT: Duration = Duration::from_secs(1);

/// Consumes the end of a stream whose last frame was read. quinn answers a
/// receive stream dropped before its end was read with STOP_SENDING, even
/// when the end had arrived: one more packet each way per request.
pub async fn read_end(recv: &mut RecvStream) {
    let _ = tokio::time::timeout(STREAM_END_WAIT, recv.read_chunk(FRAME_PREFIX_BYTES, true)).await;
}

/// Reads the one frame of a reply and the stream's end.
pub async fn read_last_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<Option<T>> {
    let frame = read_frame(recv).await?;
    if frame.is_some() {
        read_end(recv).await;
    }
    Ok(frame)
}

/// Reads one frame; `None` when the peer finished its side cleanly first.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<Option<T>> {
    match read_payload(recv).await? {
        Some(payload) => Ok(Some(decode_payload(&payload)?)),
        None => Ok(None),
    }
}

/// Reads one frame's payload, undecoded; `None` when the peer finished its
/// side cleanly first. The length is checked before anything is allocated.
pub async fn read_payload(recv: &mut RecvStream) -> Result<Option<Vec<u8>>> {
    let failed = |e: &dyn std::fmt::Display| LeafError::Net(format!("reading a frame: {e}"));
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(failed(&e)),
    }
    let len = frame_len(prefix)?;
    // Appended chunk by chunk as they arrive: no zeroing first.
    let mut payload = Vec::with_capacity(len);
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(failed(&"the stream ended mid-frame")),
            Err(e) => return Err(failed(&e)),
        }
    }
    Ok(Some(payload))
}

/// Opens a stream, sends one request and finishes the sending side.
pub async fn request<T: Serialize>(conn: &Connection, message: &T) -> Result<RecvStream> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| LeafError::Net(format!("opening a stream: {e}")))?;
    write_last(&mut send, &encode_frame(message)?).await?;
    Ok(recv)
}
