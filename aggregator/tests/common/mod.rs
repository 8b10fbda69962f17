//! Shared by the tests that talk to one real leaf server over QUIC.

use quinn::{Connection, Endpoint};
use scuba_aggregator::certs;
use scuba_leaf::leaf::{Leaf, LeafOptions};
use scuba_leaf::net::{client_endpoint, connect, TlsFiles};

/// A leaf server on 127.0.0.1 (in memory, in this process) and a client
/// connected to it with the cluster's certificates. The folder holds the
/// certificates; the endpoint keeps the connection's socket.
pub async fn leaf_over_loopback() -> (tempfile::TempDir, Endpoint, Connection) {
    let tls = tempfile::tempdir().unwrap();
    certs::generate(tls.path(), &["leaf-0".to_string(), "client".to_string()]).unwrap();
    let (leaf, _) = Leaf::open(LeafOptions::in_memory("leaf-0")).unwrap();
    let server = scuba_leaf::server::bind(
        "127.0.0.1:0".parse().unwrap(),
        &TlsFiles::in_dir(tls.path(), "leaf-0"),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(scuba_leaf::server::serve(leaf, server));
    let client = client_endpoint(&TlsFiles::in_dir(tls.path(), "client")).unwrap();
    let conn = connect(&client, addr).await.unwrap();
    (tls, client, conn)
}
