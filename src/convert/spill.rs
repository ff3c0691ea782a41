//! Per-token calibration activations kept in a temporary file, so that calibrated pruning holds
//! one batch of them in memory at a time instead of every sentence's.
//!
//! Each batch of calibration sentences owns a fixed record of [`SLOTS`] arrays of at most
//! `tokens x width` f32 values: the layer input of the dense model and of the model pruned so far,
//! and the latest stage activation of each. A stage reads a batch's arrays, computes, and writes
//! the arrays it replaced back in place. The values round-trip exactly (native-endian f32 bytes),
//! so the statistics and the fitted weights are the same as with every batch kept in memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ConvertError;

/// The arrays stored per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Layer input, dense model.
    DenseInput = 0,
    /// Layer input, pruned model.
    PrunedInput = 1,
    /// Latest stage activation (attention context, then attention output), dense model.
    DenseStage = 2,
    /// Latest stage activation, pruned model.
    PrunedStage = 3,
}

/// Arrays per batch record.
pub(crate) const SLOTS: usize = 4;

/// Where one batch's record lies.
#[derive(Debug, Clone)]
struct Record {
    lengths: Vec<usize>,
    offset: u64,
    /// Values written in each slot.
    filled: [usize; SLOTS],
}

/// Activations of every calibration batch, in a temporary file.
pub(crate) struct Spill {
    path: PathBuf,
    file: File,
    width: usize,
    records: Vec<Record>,
    end: u64,
}

impl Spill {
    /// Creates (or truncates) the file at `path` for activations at most `width` values wide.
    pub(crate) fn create(path: &Path, width: usize) -> Result<Spill, ConvertError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_err(path, &e))?;
        Ok(Spill {
            path: path.to_path_buf(),
            file,
            width,
            records: Vec::new(),
            end: 0,
        })
    }

    /// Batches stored.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Sequence lengths of batch `batch`.
    pub(crate) fn lengths(&self, batch: usize) -> &[usize] {
        self.records.get(batch).map_or(&[], |r| &r.lengths)
    }

    /// Bytes of one array of a batch of `tokens` tokens.
    fn array_bytes(&self, tokens: usize) -> u64 {
        (tokens * self.width * std::mem::size_of::<f32>()) as u64
    }

    /// Appends a batch whose layer input is `x` in both models; its stage arrays read as empty
    /// until written.
    pub(crate) fn push(&mut self, lengths: Vec<usize>, x: &[f32]) -> Result<(), ConvertError> {
        let tokens: usize = lengths.iter().sum();
        if x.len() > tokens * self.width {
            return Err(ConvertError::Calibration(format!(
                "embedding of {} values for {tokens} tokens of width at most {}",
                x.len(),
                self.width
            )));
        }
        let offset = self.end;
        self.records.push(Record {
            lengths,
            offset,
            filled: [0; SLOTS],
        });
        self.end += SLOTS as u64 * self.array_bytes(tokens);
        self.file
            .set_len(self.end)
            .map_err(|e| io_err(&self.path, &e))?;
        let batch = self.records.len() - 1;
        self.write(batch, Slot::DenseInput, x)?;
        self.write(batch, Slot::PrunedInput, x)
    }

    /// Offset and capacity in bytes of `slot` of `batch`.
    fn place(&self, batch: usize, slot: Slot) -> Result<(u64, u64), ConvertError> {
        let r = self.records.get(batch).ok_or_else(|| {
            ConvertError::Calibration(format!(
                "activation batch {batch} of {}",
                self.records.len()
            ))
        })?;
        let bytes = self.array_bytes(r.lengths.iter().sum());
        Ok((r.offset + slot as u64 * bytes, bytes))
    }

    /// Values last written to `slot` of `batch`.
    fn filled(&self, batch: usize, slot: Slot) -> usize {
        self.records
            .get(batch)
            .map_or(0, |r| r.filled[slot as usize])
    }

    /// Reads `slot` of `batch`.
    pub(crate) fn read(&self, batch: usize, slot: Slot) -> Result<Vec<f32>, ConvertError> {
        let (offset, _) = self.place(batch, slot)?;
        let mut out = vec![0f32; self.filled(batch, slot)];
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(bytemuck::cast_slice_mut(&mut out)))
            .map_err(|e| io_err(&self.path, &e))?;
        Ok(out)
    }

    /// Replaces `slot` of `batch` with `values` (at most its capacity).
    pub(crate) fn write(
        &mut self,
        batch: usize,
        slot: Slot,
        values: &[f32],
    ) -> Result<(), ConvertError> {
        let (offset, bytes) = self.place(batch, slot)?;
        let given = std::mem::size_of_val(values) as u64;
        if given > bytes {
            return Err(ConvertError::Calibration(format!(
                "activation batch {batch}: {given} bytes for a slot of {bytes}"
            )));
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(bytemuck::cast_slice(values)))
            .map_err(|e| io_err(&self.path, &e))?;
        if let Some(r) = self.records.get_mut(batch) {
            r.filled[slot as usize] = values.len();
        }
        Ok(())
    }
}

fn io_err(path: &Path, e: &std::io::Error) -> ConvertError {
    ConvertError::Calibration(format!("activation file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_exactly_and_stay_apart() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = Spill::create(&dir.path().join("a.tmp"), 3).expect("create");
        let x0: Vec<f32> = (0..6).map(|i| i as f32 * 0.1 + f32::EPSILON).collect();
        let x1: Vec<f32> = (0..9).map(|i| -(i as f32) / 3.0).collect();
        s.push(vec![1, 1], &x0).expect("push");
        s.push(vec![3], &x1).expect("push");
        assert_eq!(s.len(), 2);
        assert_eq!(s.lengths(1), &[3]);
        let y: Vec<f32> = x0.iter().map(|v| v * 7.0 + 1.0).collect();
        s.write(0, Slot::PrunedStage, &y).expect("write");
        assert_eq!(s.read(0, Slot::PrunedStage).expect("read"), y);
        for slot in [Slot::DenseInput, Slot::PrunedInput] {
            assert_eq!(s.read(0, slot).expect("read"), x0, "{slot:?}");
            assert_eq!(s.read(1, slot).expect("read"), x1, "{slot:?}");
        }
        assert!(s.read(0, Slot::DenseStage).expect("read").is_empty());
        // A narrower array (fewer attention heads than the hidden width) fits its slot.
        s.write(1, Slot::DenseStage, &x0).expect("narrower");
        assert_eq!(s.read(1, Slot::DenseStage).expect("read"), x0);
        assert_eq!(
            s.read(1, Slot::PrunedStage).expect("read"),
            Vec::<f32>::new()
        );
        assert!(s.write(0, Slot::DenseInput, &x1).is_err(), "too long");
        assert!(s.read(2, Slot::DenseInput).is_err(), "no such batch");
        assert!(s.push(vec![2], &x1).is_err(), "too wide");
    }
}
