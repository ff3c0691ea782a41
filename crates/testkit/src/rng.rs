//! The one seeded random generator of the tests, fixtures and benchmarks.
//!
//! [`Rng`] is SplitMix64 (Steele, Lea and Flood; the seeding generator of the xoshiro family):
//! one `u64` of state, full period 2^64, and well mixed output even from consecutive seeds. Its
//! stream is part of the committed fixtures' definition, so it is written out here rather than
//! taken from a crate whose value stream may change between versions: changing any method below
//! changes the bytes of `fixtures/`.
//!
//! Tests that draw fresh values each run take their seed from [`test_seed`], which prints it and
//! honours the `ETS_TEST_SEED` override, so every failure can be replayed:
//!
//! ```
//! use ets_testkit::rng::{test_seed, Rng};
//!
//! let mut rng = Rng::new(test_seed("doc_example"));
//! let x = rng.symmetric(0.5);
//! assert!((-0.5..0.5).contains(&x));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that replaces every fresh seed of [`test_seed`].
pub const SEED_VAR: &str = "ETS_TEST_SEED";

/// SplitMix64: small, fast, deterministic on every machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed; equal seeds give equal streams.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator seeded by the FNV-1a hash of `name`, so values keyed by a name (a tensor's,
    /// say) do not depend on the order in which names are visited.
    pub fn for_name(name: &str) -> Rng {
        Rng::new(fnv1a(name.as_bytes()))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 random bits (every value exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[0, 1)` with 53 random bits (every value exact in f64).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-scale, scale)`, from [`Rng::next_f32`].
    pub fn symmetric(&mut self, scale: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * scale
    }

    /// Uniform in `[lo, hi)` as f32, from [`Rng::next_f64`] rounded to f32 (so `hi` itself can
    /// come out when the interval is wide against f32's precision near `hi`).
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f64() as f32
    }

    /// A standard normal value (mean 0, deviation 1), by the Box-Muller transform.
    pub fn normal(&mut self) -> f32 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.next_f64();
        let v = self.next_f64();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Uniform integer in `[0, n)`; `0` when `n` is 0. The modulo bias is below `n / 2^64`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform index in `range` (`start..end`, `start < end`); `start` when the range is empty.
    pub fn index(&mut self, range: std::ops::Range<usize>) -> usize {
        let span = range.end.saturating_sub(range.start) as u64;
        range.start + self.below(span) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A mask over `n` entries with exactly `round(density * n)` entries set (at least one when
    /// `n > 0`), at uniformly random places (a partial Fisher-Yates shuffle).
    pub fn mask(&mut self, n: usize, density: f64) -> Vec<bool> {
        let k = ((density.clamp(0.0, 1.0) * n as f64).round() as usize).clamp(1, n.max(1));
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut m = vec![false; n];
        for &i in &idx[..k] {
            m[i] = true;
        }
        m
    }

    /// `n` values uniform in `[-scale, scale)` (see [`Rng::symmetric`]).
    pub fn symmetric_vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.symmetric(scale)).collect()
    }

    /// `n` values normal with mean 0 and deviation `std`.
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seed of the test `name`: `ETS_TEST_SEED` when set (decimal, or hex with `0x`), else a
/// fresh one from the clock, the process and a counter. Prints
/// `seed for NAME: N (rerun with ETS_TEST_SEED=N)` to stderr, which the test harness shows when
/// the test fails.
///
/// # Panics
/// When `ETS_TEST_SEED` is set but is not a number: a test must not silently ignore a replay
/// request.
pub fn test_seed(name: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => match parse_seed(&text) {
            Some(seed) => seed,
            None => panic!("{SEED_VAR}={text:?} is not a decimal or 0x-hex u64"),
        },
        Err(_) => fresh_seed(),
    };
    eprintln!("seed for {name}: {seed} (rerun with {SEED_VAR}={seed})");
    seed
}

/// A generator seeded by [`test_seed`].
pub fn test_rng(name: &str) -> Rng {
    Rng::new(test_seed(name))
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Distinct on each call: two tests started in the same nanosecond still get different seeds.
fn fresh_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut mix = Rng::new(nanos ^ (u64::from(std::process::id()) << 32) ^ call.rotate_left(17));
    mix.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs of the reference splitmix64.c for seed 1234567.
        let mut rng = Rng::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn floats_stay_in_their_ranges() {
        let mut rng = test_rng("floats_stay_in_their_ranges");
        for _ in 0..10_000 {
            assert!((0.0..1.0).contains(&rng.next_f32()));
            assert!((0.0..1.0).contains(&rng.next_f64()));
            assert!((-3.0..3.0).contains(&rng.symmetric(3.0)));
            assert!((2.0..=5.0).contains(&rng.range_f32(2.0, 5.0)));
            assert!(rng.below(7) < 7);
            assert!((3..9).contains(&rng.index(3..9)));
            assert!(rng.normal().is_finite());
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.index(4..4), 4);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = test_rng("normal_has_unit_moments");
        let n = 200_000;
        let v = rng.normal_vec(n, 1.0);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn masks_have_the_exact_count() {
        let mut rng = test_rng("masks_have_the_exact_count");
        for (n, density, want) in [
            (0, 0.5, 0),
            (1, 0.0, 1),
            (10, 0.0, 1),
            (10, 0.34, 3),
            (64, 1.0, 64),
        ] {
            let m = rng.mask(n, density);
            assert_eq!(m.len(), n);
            assert_eq!(
                m.iter().filter(|&&b| b).count(),
                want,
                "n {n} density {density}"
            );
        }
    }

    #[test]
    fn seeds_parse_and_differ() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("forty"), None);
        assert_ne!(fresh_seed(), fresh_seed());
        assert_eq!(Rng::new(9), Rng::new(9));
    }
}
