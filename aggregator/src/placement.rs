//! Write placement: each batch goes to the one of two randomly chosen leaves
//! with more free memory (the power of two choices), as Scuba does.
//! Pure: the caller passes the RNG and what it knows of the leaves
//! ([`Room`]: what each last reported, less what is on its way to it).

use rand::Rng;

/// Picks a leaf among those not excluded (e.g. failed for this batch):
/// two distinct random candidates, the one with more free bytes wins.
/// `None` when every leaf is excluded.
pub fn two_choices(rng: &mut impl Rng, free_bytes: &[u64], excluded: &[bool]) -> Option<usize> {
    let candidates: Vec<usize> = (0..free_bytes.len()).filter(|&i| !excluded[i]).collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates[a], candidates[b]);
            Some(if free_bytes[b] > free_bytes[a] { b } else { a })
        }
    }
}

/// What an ingest knows of each leaf's free memory: what the leaf last
/// reported, less the bytes of the batches sent to it and not answered yet.
/// Without those, every batch placed before the first answers came back
/// saw the leaves as they were at the start, and the pairings alone spread
/// them (unevenly, over a few batches).
#[derive(Debug, Clone)]
pub struct Room {
    reported: Vec<u64>,
    in_flight: Vec<u64>,
}

impl Room {
    /// Leaves with the free memory they reported, nothing in flight.
    pub fn new(reported: Vec<u64>) -> Room {
        let in_flight = vec![0; reported.len()];
        Room {
            reported,
            in_flight,
        }
    }

    /// Free bytes of `leaf` as far as is known.
    pub fn free(&self, leaf: usize) -> u64 {
        self.reported[leaf].saturating_sub(self.in_flight[leaf])
    }

    /// Places a batch of `bytes` among the leaves not excluded (two
    /// choices) and counts it in flight to the leaf picked.
    pub fn place(&mut self, rng: &mut impl Rng, bytes: u64, excluded: &[bool]) -> Option<usize> {
        let free: Vec<u64> = (0..self.reported.len()).map(|i| self.free(i)).collect();
        let leaf = two_choices(rng, &free, excluded)?;
        self.in_flight[leaf] += bytes;
        Some(leaf)
    }

    /// The batch of `bytes` placed on `leaf` was answered: no longer in
    /// flight; `reported` is the free memory the answer gave, if it gave any.
    pub fn answered(&mut self, leaf: usize, bytes: u64, reported: Option<u64>) {
        self.in_flight[leaf] = self.in_flight[leaf].saturating_sub(bytes);
        if let Some(free) = reported {
            self.reported[leaf] = free;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn placement_spreads_evenly_across_equal_leaves() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[two_choices(&mut rng, &[100; 4], &[false; 4]).unwrap()] += 1;
        }
        for c in counts {
            assert!((8_000..12_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn fuller_leaf_loses_every_pairing() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1_000 {
            let pick = two_choices(&mut rng, &[10, 100], &[false, false]).unwrap();
            assert_eq!(pick, 1);
        }
    }

    #[test]
    fn batches_in_flight_count_against_their_leaf_before_it_answers() {
        // Twelve batches placed on four equal leaves before any answer,
        // from 400 seeds, counted in flight or (as before) not: then every
        // pairing is a tie and the first leaf drawn takes the batch.
        let seeds = 400;
        let (mut spread, mut spread_uncounted, mut most_uncounted) = (0, 0, 0);
        for seed in 0..seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut room = Room::new(vec![1 << 30; 4]);
            let mut counts = [0u64; 4];
            let mut uncounted = [0u64; 4];
            for _ in 0..12 {
                counts[room.place(&mut rng, 1 << 20, &[false; 4]).unwrap()] += 1;
                uncounted[two_choices(&mut rng, &[1 << 30; 4], &[false; 4]).unwrap()] += 1;
            }
            for (leaf, &c) in counts.iter().enumerate() {
                assert_eq!(room.free(leaf), (1 << 30) - c * (1 << 20));
            }
            let (most, least) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
            assert!(*most <= 5, "seed {seed}: {counts:?}");
            spread += most - least;
            let most = *uncounted.iter().max().unwrap();
            spread_uncounted += most - uncounted.iter().min().unwrap();
            most_uncounted = most_uncounted.max(most);
        }
        // Counted, the leaves end 1.3 batches apart on average (most to
        // fewest); not counted, 3.6, and some leaf got 8 of the 12.
        assert!(spread * 10 < seeds * 16, "mean spread {spread}/{seeds}");
        assert!(
            spread_uncounted > 2 * spread,
            "{spread_uncounted} vs {spread}"
        );
        assert!(most_uncounted >= 7, "{most_uncounted}");
    }

    #[test]
    fn an_answer_replaces_the_report_and_ends_the_batch_in_flight() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut room = Room::new(vec![1_000, 1_000]);
        let leaf = room.place(&mut rng, 100, &[false, false]).unwrap();
        assert_eq!(room.free(leaf), 900);
        room.answered(leaf, 100, Some(880));
        assert_eq!(room.free(leaf), 880);
        // A refusal carries no report: the batch just stops counting.
        let other = room.place(&mut rng, 100, &[leaf == 0, leaf == 1]).unwrap();
        room.answered(other, 100, None);
        assert_eq!(room.free(other), 1_000);
    }

    #[test]
    fn excluded_leaves_are_never_picked() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1_000 {
            assert_eq!(
                two_choices(&mut rng, &[1, 2, 3], &[true, false, true]),
                Some(1)
            );
        }
        assert_eq!(two_choices(&mut rng, &[1], &[true]), None);
    }
}
