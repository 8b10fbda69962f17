//! A request costs its own packets and no more. Each side reads the end of
//! every stream it is done with, because quinn answers a receive stream
//! dropped before its end was read with a STOP_SENDING frame (even when
//! the end had already arrived): one more packet each way, and one more
//! wake-up of the peer, on every query.
//!
//! A real leaf server on 127.0.0.1, over QUIC with the cluster's
//! certificates, asked the way the aggregator and `scubactl` ask.

use std::time::Duration;

mod common;

use scuba::wire::{Request, Response};
use scuba_leaf::net::{read_last_frame, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_requests_stop_no_streams() {
    let (_tls, _client, conn) = common::leaf_over_loopback().await;
    for _ in 0..20 {
        let mut recv = request(&conn, &Request::LeafStats).await.unwrap();
        let reply = read_last_frame::<Response>(&mut recv).await.unwrap();
        assert!(matches!(reply, Some(Response::Stats(_))), "{reply:?}");
    }
    // Anything the server sends after its replies has arrived by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = conn.stats();
    assert_eq!(stats.frame_tx.stop_sending, 0, "the client stopped streams");
    assert_eq!(stats.frame_rx.stop_sending, 0, "the leaf stopped streams");
}
