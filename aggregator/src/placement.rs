//! Write placement: each batch goes to the one of two randomly chosen leaves
//! with more free memory (the power of two choices), as Scuba does.
//! Pure: the caller passes the RNG and what it knows of the leaves.

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
