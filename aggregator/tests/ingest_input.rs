//! How an ingest reads its input: several decoding threads take turns at
//! one reader, chunk by chunk, yet the rows land as one reader would land
//! them. Through the embedded database (in-process leaves, the CLI's
//! ingest code).

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use scuba::limits::BATCH_ROWS_MAX;
use scuba_aggregator::embedded::Database;

/// Yields its bytes in small reads, then fails.
struct FailingAfter {
    bytes: Vec<u8>,
    at: usize,
}

impl std::io::Read for FailingAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.bytes.len() {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.bytes.len() - self.at).min(10_000);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn int(batches: &[RecordBatch], column: usize) -> i64 {
    batches[0]
        .column(column)
        .as_primitive::<Int64Type>()
        .value(0)
}

/// Lines 1..=n, each `{"id": line}`, except the lines in `bad`.
fn lines(n: usize, bad: &[usize]) -> String {
    (1..=n)
        .map(|i| match bad.contains(&i) {
            true => "{\"id\": oops}\n".to_string(),
            false => format!("{{\"id\": {i}}}\n"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_lands_every_whole_line_before_it_and_says_why() {
    // Several batches' worth, so several decoders read a chunk each.
    let n = 3 * BATCH_ROWS_MAX + 100;
    let mut input = lines(n, &[]);
    input.push_str("{\"id\": 99"); // cut short by the error: not a line
    let db = Database::open(4).unwrap();
    let report = db
        .ingest_jsonl(
            "events",
            FailingAfter {
                bytes: input.into_bytes(),
                at: 0,
            },
        )
        .await
        .unwrap();
    let stopped = report.stopped.expect("the read error stops the ingest");
    assert!(stopped.contains("reading input: disk on fire"), "{stopped}");
    assert_eq!(report.rows_ingested, n as u64);
    assert_eq!(report.rows_rejected, 0);
    let answer = db
        .query("SELECT count(*), sum(id), count(DISTINCT id) FROM events")
        .await
        .unwrap();
    let expected_sum = (n * (n + 1) / 2) as i64;
    assert_eq!(int(&answer.batches, 0), n as i64);
    assert_eq!(int(&answer.batches, 1), expected_sum);
    assert_eq!(int(&answer.batches, 2), n as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_from_chunks_decoded_on_different_threads_come_in_input_order() {
    let n = 4 * BATCH_ROWS_MAX;
    let bad = [
        5,
        BATCH_ROWS_MAX + 7,
        2 * BATCH_ROWS_MAX + 1,
        3 * BATCH_ROWS_MAX + 9,
        n,
    ];
    let db = Database::open(4).unwrap();
    let report = db
        .ingest_jsonl("events", std::io::Cursor::new(lines(n, &bad)))
        .await
        .unwrap();
    assert!(report.stopped.is_none(), "{:?}", report.stopped);
    let rejected: Vec<u64> = report.rejections.iter().map(|r| r.line).collect();
    assert_eq!(rejected, bad.map(|b| b as u64));
    assert_eq!(report.rows_ingested, (n - bad.len()) as u64);
    let answer = db.query("SELECT count(*) FROM events").await.unwrap();
    assert_eq!(int(&answer.batches, 0), (n - bad.len()) as i64);
}
