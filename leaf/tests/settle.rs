//! After a crash, a leaf holds back the batches it logged last and asks its
//! peers which of them they applied. These tests drive two leaves through
//! their API, with a crash simulated by opening a leaf's folder again
//! without stopping it.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use scuba::wire::BatchId;
use scuba_leaf::leaf::{Leaf, LeafOptions};

const X: BatchId = BatchId { session: 7, seq: 1 };

fn options(id: &str, dir: &std::path::Path) -> LeafOptions {
    LeafOptions {
        data_dir: Some(dir.to_path_buf()),
        ..LeafOptions::in_memory(id)
    }
}

fn batch(ids: std::ops::Range<i64>) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("time", scuba::schema::time_type(), true),
        Field::new("id", datafusion::arrow::datatypes::DataType::Int64, true),
    ]));
    let times: TimestampMicrosecondArray = ids.clone().map(|i| Some(i * 1_000_000)).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(times), Arc::new(Int64Array::from_iter_values(ids))],
    )
    .unwrap();
    scuba::ipc::batches_to_ipc(&schema, &[batch]).unwrap()
}

/// Opens the leaf in `dir` again as a crash restart does: the batches it
/// logged last are held back until [`Leaf::settle`].
fn crash_and_restart(leaf: Arc<Leaf>, id: &str, dir: &std::path::Path) -> Arc<Leaf> {
    drop(leaf);
    Leaf::open(options(id, dir)).unwrap().0
}

#[test]
fn a_batch_logged_just_before_a_crash_is_held_back_until_peers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Leaf::open(options("leaf-p", dir.path())).unwrap();
    p.ingest("t", X, &batch(0..100)).unwrap();
    let p = crash_and_restart(p, "leaf-p", dir.path());
    assert_eq!(p.held_back().0, vec![X]);
    assert!(p.holds(&[X]).is_empty(), "held back is not applied");
    assert_eq!(p.settle(&HashSet::new()).unwrap(), (1, 0));
    assert_eq!(p.holds(&[X]), vec![X]);
}

#[test]
fn a_leaf_that_dropped_a_batch_as_applied_elsewhere_does_not_claim_to_hold_it() {
    // P logs X and dies before acknowledging; the client retries X on Q.
    let (p_dir, q_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (p, _) = Leaf::open(options("leaf-p", p_dir.path())).unwrap();
    p.ingest("t", X, &batch(0..100)).unwrap();
    let (q, _) = Leaf::open(options("leaf-q", q_dir.path())).unwrap();
    q.ingest("t", X, &batch(0..100)).unwrap();
    // P restarts; Q says it holds X, so P drops it.
    let p = crash_and_restart(p, "leaf-p", p_dir.path());
    assert_eq!(
        p.settle(&q.holds(&[X]).into_iter().collect()).unwrap(),
        (0, 1)
    );
    assert!(p.holds(&[X]).is_empty());
    // Later Q crashes with X still its newest record, so Q holds it back
    // and asks P. P must not claim X, or nobody keeps its rows.
    let q = crash_and_restart(q, "leaf-q", q_dir.path());
    assert_eq!(q.held_back().0, vec![X]);
    let elsewhere: HashSet<BatchId> = p.holds(&[X]).into_iter().collect();
    assert_eq!(q.settle(&elsewhere).unwrap(), (1, 0));
    // The same after P restarts again (X is a tombstone in P's log now),
    // and Q still holds X's rows.
    let p = crash_and_restart(p, "leaf-p", p_dir.path());
    assert!(p.holds(&[X]).is_empty());
    assert_eq!(q.holds(&[X]), vec![X]);
    let rows: u64 = q.stats().unwrap().tables.iter().map(|t| t.rows).sum();
    assert_eq!(rows, 100);
}

#[test]
fn a_hand_off_keeps_which_batches_are_held_elsewhere() {
    let (p_dir, q_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p_options = || LeafOptions {
        shm_dir: Some(p_dir.path().join("shm")),
        ..options("leaf-p", p_dir.path())
    };
    let (p, _) = Leaf::open(p_options()).unwrap();
    p.ingest("t", X, &batch(0..100)).unwrap();
    let (q, _) = Leaf::open(options("leaf-q", q_dir.path())).unwrap();
    q.ingest("t", X, &batch(0..100)).unwrap();
    drop(p);
    let (p, _) = Leaf::open(p_options()).unwrap();
    p.settle(&q.holds(&[X]).into_iter().collect()).unwrap();
    // Another batch, so the hand-off has a block to pass on.
    let y = BatchId { session: 7, seq: 2 };
    p.ingest("t", y, &batch(100..200)).unwrap();
    p.handoff().unwrap();
    drop(p);
    let (successor, _) = Leaf::open(p_options()).unwrap();
    successor.wait_until_checked().unwrap();
    assert_eq!(successor.holds(&[X, y]), vec![y]);
    // A late retry of X is still recognised, and not applied a second time.
    assert!(successor.ingest("t", X, &batch(0..100)).unwrap().duplicate);
}
