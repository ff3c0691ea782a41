//! Minimal `.npy` (version 1.0) reading and writing for little-endian f32 arrays.
//!
//! Writing goes to a temporary file beside the target and is renamed into place, so a reader
//! never sees a half-written array.

use std::io::Write;
use std::path::Path;

/// Errors of `.npy` reading and writing.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a little-endian f32 `.npy` in C order.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The `.npy` header (magic, version, length, dictionary) for an f32 array of `shape`.
fn header_bytes(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Serializes `data` with shape `shape` as `.npy` bytes.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header_bytes(shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes `data` with shape `shape` to `path` (see [`NpyStream`]).
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let mut s = NpyStream::create(path, shape)?;
    s.push(data)?;
    s.finish()
}

/// An `.npy` array written row by row, so that no caller holds the whole array.
///
/// A regular file (or a new name) is written to a temporary sibling and renamed into place when
/// [`NpyStream::finish`] has checked that exactly the values of the shape were written; an
/// existing device or pipe (`/dev/stdout`, a FIFO) is written through, never replaced.
pub struct NpyStream {
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    temp: Option<crate::files::TempPath>,
    expected: usize,
    written: usize,
}

impl NpyStream {
    /// Starts an array of `shape` at `path`.
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyStream, NpyError> {
        let io = |source| NpyError::Io {
            path: path.display().to_string(),
            source,
        };
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| NpyError::Invalid {
                path: path.display().to_string(),
                reason: format!("shape {shape:?} overflows"),
            })?;
        let (file, temp) = match crate::files::OutputTarget::of(path) {
            crate::files::OutputTarget::Special => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                (f, None)
            }
            _ => {
                let t = crate::files::TempPath::beside(path, "npy");
                (std::fs::File::create(t.path()).map_err(io)?, Some(t))
            }
        };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header_bytes(shape)).map_err(io)?;
        Ok(NpyStream {
            path: path.to_path_buf(),
            out,
            temp,
            expected,
            written: 0,
        })
    }

    fn io(&self, source: std::io::Error) -> NpyError {
        NpyError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Appends values in C order.
    pub fn push(&mut self, values: &[f32]) -> Result<(), NpyError> {
        if self.written + values.len() > self.expected {
            return Err(NpyError::Invalid {
                path: self.path.display().to_string(),
                reason: format!("more than the {} values of the shape", self.expected),
            });
        }
        for v in values {
            if let Err(e) = self.out.write_all(&v.to_le_bytes()) {
                return Err(self.io(e));
            }
        }
        self.written += values.len();
        Ok(())
    }

    /// Appends `count` zeros (padding rows).
    pub fn push_zeros(&mut self, count: usize) -> Result<(), NpyError> {
        const ZEROS: [f32; 1024] = [0.0; 1024];
        let mut left = count;
        while left > 0 {
            let n = left.min(ZEROS.len());
            self.push(&ZEROS[..n])?;
            left -= n;
        }
        Ok(())
    }

    /// Checks the count, flushes, and renames a temporary file into place.
    pub fn finish(self) -> Result<(), NpyError> {
        if self.written != self.expected {
            return Err(NpyError::Invalid {
                path: self.path.display().to_string(),
                reason: format!(
                    "{} values written, the shape holds {}",
                    self.written, self.expected
                ),
            });
        }
        let path = self.path.clone();
        let io = |source| NpyError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        if let Some(t) = &self.temp {
            file.sync_all().map_err(io)?;
            drop(file);
            std::fs::rename(t.path(), &path).map_err(io)?;
        }
        Ok(())
    }
}

/// Reads a little-endian f32 (`<f4`) C-order `.npy` file: `(shape, data)`.
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    from_bytes(&bytes).map_err(|reason| NpyError::Invalid {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses `.npy` bytes holding little-endian f32 in C order.
pub fn from_bytes(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.get(..6) != Some(b"\x93NUMPY".as_slice()) {
        return Err("not an .npy file (bad magic)".to_string());
    }
    let major = bytes.get(6).copied().unwrap_or(0);
    let (hlen, hstart) = match major {
        1 => (
            bytes
                .get(8..10)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
            10,
        ),
        2 | 3 => (
            bytes
                .get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let hlen = hlen.ok_or("truncated header")?;
    let header = bytes.get(hstart..hstart + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!(
            "only little-endian f32 ('<f4') is supported: {header}"
        ));
    }
    if header.contains("'fortran_order': True") {
        return Err("Fortran order is not supported".to_string());
    }
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in header")?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| format!("bad shape `{s}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[hstart + hlen..];
    if body.len() != count * 4 {
        return Err(format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            count * 4,
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let bytes = to_bytes(&[3, 4], &data);
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(from_bytes(&bytes).unwrap(), (vec![3, 4], data.clone()));
        let one = to_bytes(&[12], &data);
        assert_eq!(from_bytes(&one).unwrap().0, vec![12]);
        assert!(from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
