//! Bulk data goes in large packets where the path carries them. On loopback
//! a connection's packets grow to `UDP_PAYLOAD_BYTES_MAX` (path-MTU
//! discovery), and an ingest sent in them loses none: ten such packets, as
//! quinn hands them to the kernel in one send, still fit the 64 KiB a send
//! may hold. Past that bound Linux refuses whole sends and quinn counts them
//! as sent, so they are lost and resent.
//!
//! A real leaf server on 127.0.0.1, over QUIC with the cluster's
//! certificates, sent batches the way `scubactl ingest` sends them.

use std::time::{Duration, Instant};

mod common;

use scuba::decode::BatchBuilder;
use scuba::wire::{BatchId, Request, Response};
use scuba_leaf::net::{read_last_frame, request, UDP_PAYLOAD_BYTES_MAX};

/// An Arrow IPC batch of `rows` sample events, as the client encodes one.
fn ipc_batch(rows: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new("events", "time", 0);
    for i in 0..rows {
        let line = format!(
            r#"{{"time":{},"service":"svc-{}","latency_ms":{}.5,"user_id":"user-{}"}}"#,
            1_700_000_000 + i,
            i % 7,
            i % 1000,
            i
        );
        builder.push_json(i as u64 + 1, &line).unwrap();
    }
    let batch = builder.finish().unwrap().unwrap().batch;
    scuba::ipc::batches_to_ipc(batch.schema_ref(), std::slice::from_ref(&batch)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_over_loopback_goes_in_the_largest_packets_and_loses_none() {
    let (_tls, _client, conn) = common::leaf_over_loopback().await;
    // Discovery runs in the background from the handshake on; quinn's
    // search stops within its minimum step (20 bytes) of the bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.stats().path.current_mtu + 20 < UDP_PAYLOAD_BYTES_MAX {
        assert!(
            Instant::now() < deadline,
            "packets stayed at {} bytes",
            conn.stats().path.current_mtu
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ipc = ipc_batch(16 * 1024);
    let before = conn.stats();
    for seq in 0..2 {
        let batch = Request::Ingest {
            table: "events".into(),
            batch_id: BatchId { session: 1, seq },
            pad: Vec::new(),
            ipc: ipc.clone(),
        };
        let mut recv = request(&conn, &batch).await.unwrap();
        let reply = read_last_frame::<Response>(&mut recv).await.unwrap();
        assert!(
            matches!(reply, Some(Response::IngestAck { rows: 16384, .. })),
            "{reply:?}"
        );
    }
    let after = conn.stats();
    let sent = after.udp_tx.bytes - before.udp_tx.bytes;
    let datagrams = after.udp_tx.datagrams - before.udp_tx.datagrams;
    assert!(
        sent as usize > 2 * ipc.len(),
        "{sent} bytes for two batches"
    );
    assert!(
        sent / datagrams > u64::from(UDP_PAYLOAD_BYTES_MAX) / 2,
        "{datagrams} datagrams for {sent} bytes"
    );
    assert_eq!(
        after.path.lost_packets, before.path.lost_packets,
        "packets lost"
    );
}
