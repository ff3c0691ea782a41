//! A batch's token arrays as the kernels take them: sequence after sequence with no padding rows
//! between them, cumulative offsets `cu`, and, when asked, rounded up to a coarser shape so that
//! batches of nearby sizes share one captured CUDA graph.
//!
//! Rounding adds rows at the end only, grouped into extra sequences of at most
//! [`ATTENTION_BLOCK`] rows of token id 0 at position 0 (always in range), and raises the longest
//! length to a power of two of attention blocks, at least two (query blocks past a sequence's end
//! return at once, so a larger grid costs next to nothing). Every kernel of the pass treats rows
//! independently or within the sequence `cu` names (the attention kernel returns for query blocks
//! past a sequence's end), so the real sequences' results are the same with or without the extra
//! rows; pooling and every download read the real sequences only.

use crate::runtime::cuda::CudaError;
use crate::runtime::{RuntimeError, TokenBatch};

/// Query rows per block of the attention kernel: its grid depends on the longest sequence only
/// through the number of these blocks.
pub(crate) const ATTENTION_BLOCK: usize = 64;

/// Tokens a batch of `t` tokens is rounded up to: a multiple of 64 up to 512 tokens, above that
/// a multiple of an eighth of the next power of two (seven or eight shapes per doubling; fewer
/// than a quarter of `t` extra rows, under a tenth on average).
pub(crate) fn padded_tokens(t: usize) -> usize {
    let step = pad_step(t);
    t.max(1).div_ceil(step) * step
}

fn pad_step(t: usize) -> usize {
    (t.max(1).next_power_of_two() / 8).max(ATTENTION_BLOCK)
}

/// The longest sequence a rounded batch is launched for: a power of two of attention blocks, at
/// least two.
pub(crate) fn padded_max_len(max_len: usize) -> usize {
    max_len
        .max(1)
        .div_ceil(ATTENTION_BLOCK)
        .next_power_of_two()
        .max(2)
        * ATTENTION_BLOCK
}

/// Extra sequences that hold the rows added to a batch of `t` tokens (a fixed number for each
/// rounding step, so that the shape depends on the step and not on how many rows were added).
pub(crate) fn padding_sequences(t: usize) -> usize {
    (pad_step(t) - 1).div_ceil(ATTENTION_BLOCK)
}

/// Rows and sequences the device buffers need for batches of up to `tokens` tokens in up to
/// `seqs` sequences, rounded as [`Packed::new`] rounds them.
pub(crate) fn padded_capacity(tokens: usize, seqs: usize) -> (usize, usize) {
    (padded_tokens(tokens), seqs + padding_sequences(tokens))
}

/// Packed token arrays of one batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Packed {
    /// Token ids, one per row (rounded rows included).
    pub ids: Vec<u32>,
    /// Token types, one per row.
    pub types: Vec<u32>,
    /// Positions, one per row.
    pub positions: Vec<u32>,
    /// Cumulative offsets of every sequence the kernels run (extra sequences included).
    pub cu: Vec<i32>,
    /// Lengths of the batch's own sequences.
    pub lengths: Vec<usize>,
    /// The longest sequence as the attention kernel is launched for ([`padded_max_len`] when
    /// the batch is rounded).
    pub max_len: usize,
    /// Tokens of the batch's own sequences.
    pub real_tokens: usize,
}

impl Packed {
    /// Packs `batch`; with `round`, adds rows and sequences as the module describes.
    pub fn new(batch: &TokenBatch, round: bool) -> Result<Packed, RuntimeError> {
        let tokens = batch.total_tokens();
        let rows = if round { padded_tokens(tokens) } else { tokens };
        let extra_seqs = if round { padding_sequences(tokens) } else { 0 };
        let offset = |v: usize| {
            i32::try_from(v).map_err(|_| {
                RuntimeError::Cuda(CudaError::Invalid(format!(
                    "a batch of {rows} tokens exceeds the 32-bit offsets of the CUDA encoder"
                )))
            })
        };
        let mut p = Packed {
            ids: Vec::with_capacity(rows),
            types: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
            cu: Vec::with_capacity(batch.len() + extra_seqs + 1),
            lengths: Vec::with_capacity(batch.len()),
            max_len: batch.max_len(),
            real_tokens: tokens,
        };
        p.cu.push(0);
        for s in &batch.sequences {
            p.ids.extend_from_slice(&s.ids);
            p.types.extend_from_slice(&s.type_ids);
            p.positions.extend(0..s.ids.len() as u32);
            p.lengths.push(s.len());
            p.cu.push(offset(p.ids.len())?);
        }
        if round {
            p.max_len = padded_max_len(p.max_len);
            let mut left = rows - tokens;
            for _ in 0..extra_seqs {
                let n = left.min(ATTENTION_BLOCK);
                left -= n;
                p.ids.resize(p.ids.len() + n, 0);
                p.cu.push(offset(p.ids.len())?);
            }
            p.types.resize(p.ids.len(), 0);
            p.positions.resize(p.ids.len(), 0);
        }
        Ok(p)
    }

    /// Rows the kernels run on.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Sequences the kernels run (the batch's and the extra ones).
    pub fn seqs(&self) -> usize {
        self.cu.len() - 1
    }

    /// What a captured graph depends on: rows, sequences and the longest sequence.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.tokens(), self.seqs(), self.max_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lengths: &[usize]) -> TokenBatch {
        TokenBatch::from_ids(
            lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n as u32).map(|j| 100 + i as u32 * 1000 + j).collect())
                .collect(),
        )
    }

    #[test]
    fn rounding_steps() {
        assert_eq!(padded_tokens(1), 64);
        assert_eq!(padded_tokens(64), 64);
        assert_eq!(padded_tokens(65), 128);
        assert_eq!(padded_tokens(500), 512);
        // 513..1024 round to multiples of 128, 1025..2048 to 256.
        assert_eq!(padded_tokens(513), 640);
        assert_eq!(padded_tokens(1000), 1024);
        assert_eq!(padded_tokens(1024), 1024);
        assert_eq!(padded_tokens(1025), 1280);
        assert_eq!(padded_tokens(3000), 3072);
        assert_eq!(padded_tokens(4097), 5120);
        let mut shapes = std::collections::BTreeSet::new();
        for t in 1..20_000 {
            let r = padded_tokens(t);
            assert!(r >= t && r - t < pad_step(t), "{t} -> {r}");
            // Fewer than a quarter extra above 256 tokens.
            if t > 256 {
                assert!((r - t) * 4 < t, "{t} -> {r}");
            }
            if (513..=1024).contains(&t) {
                shapes.insert(r);
            }
            // The extra sequences hold every added row in blocks of at most 64.
            assert!(padding_sequences(t) * ATTENTION_BLOCK >= r - t, "{t}");
        }
        assert_eq!(shapes.len(), 4, "{shapes:?}");
        assert_eq!(padded_max_len(1), 128);
        assert_eq!(padded_max_len(128), 128);
        assert_eq!(padded_max_len(129), 256);
        assert_eq!(padded_max_len(200), 256);
        assert_eq!(padded_max_len(300), 512);
        assert_eq!(padded_max_len(512), 512);
    }

    #[test]
    fn an_unrounded_batch_is_packed_as_given() {
        let b = batch(&[3, 1, 5]);
        let p = Packed::new(&b, false).unwrap();
        assert_eq!(p.cu, vec![0, 3, 4, 9]);
        assert_eq!(p.tokens(), 9);
        assert_eq!(p.real_tokens, 9);
        assert_eq!(p.max_len, 5);
        assert_eq!(p.positions, vec![0, 1, 2, 0, 0, 1, 2, 3, 4]);
        assert_eq!(p.shape(), (9, 3, 5));
    }

    #[test]
    fn a_rounded_batch_keeps_its_rows_and_adds_short_sequences_at_the_end() {
        let lengths = [37, 12, 50, 9];
        let b = batch(&lengths);
        let plain = Packed::new(&b, false).unwrap();
        let p = Packed::new(&b, true).unwrap();
        assert_eq!(p.tokens(), 128);
        assert_eq!(p.real_tokens, 108);
        assert_eq!(p.lengths, lengths.to_vec());
        assert_eq!(p.max_len, 128);
        // The batch's own rows and offsets are unchanged.
        assert_eq!(&p.ids[..108], &plain.ids[..]);
        assert_eq!(&p.positions[..108], &plain.positions[..]);
        assert_eq!(&p.cu[..5], &plain.cu[..]);
        // The added rows: id 0, type 0, position 0, in one extra sequence of 20 rows.
        assert!(p.ids[108..].iter().all(|&v| v == 0));
        assert!(p.types[108..].iter().all(|&v| v == 0));
        assert!(p.positions[108..].iter().all(|&v| v == 0));
        assert_eq!(p.seqs(), 5);
        assert_eq!(*p.cu.last().unwrap(), 128);
        assert_eq!(p.types.len(), 128);
        assert_eq!(p.positions.len(), 128);
    }

    #[test]
    fn batches_of_nearby_sizes_share_a_shape() {
        // Same sequence count, longest in the same attention block, tokens in the same step.
        let a = Packed::new(&batch(&[30, 20, 10, 40]), true).unwrap();
        let b = Packed::new(&batch(&[25, 33, 18, 28]), true).unwrap();
        assert_ne!(a.real_tokens, b.real_tokens);
        assert_eq!(a.shape(), b.shape());
        // Unrounded, they differ.
        let (ua, ub) = (
            Packed::new(&batch(&[30, 20, 10, 40]), false).unwrap(),
            Packed::new(&batch(&[25, 33, 18, 28]), false).unwrap(),
        );
        assert_ne!(ua.shape(), ub.shape());
    }

    #[test]
    fn every_extra_sequence_fits_one_attention_block_and_the_capacity_holds_it() {
        for t in [1usize, 63, 64, 65, 700, 1023, 1025, 2047, 2049, 5000] {
            let lens: Vec<usize> = {
                let mut v = vec![t / 3, t / 3];
                v.push(t - 2 * (t / 3));
                v.retain(|&n| n > 0);
                v
            };
            let p = Packed::new(&batch(&lens), true).unwrap();
            let (cap_t, cap_s) = padded_capacity(t, lens.len());
            assert!(p.tokens() <= cap_t && p.seqs() <= cap_s, "{t}");
            for w in p.cu[lens.len()..].windows(2) {
                let n = (w[1] - w[0]) as usize;
                assert!(n <= ATTENTION_BLOCK && n <= p.max_len, "{t}: {n}");
            }
            assert!(p.cu.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
