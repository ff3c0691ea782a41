//! Writing a `.ets` file: streaming, atomic, deterministic.
//!
//! Sections stream into a temporary data file as they are added (the writer keeps no tensor after
//! `add_tensor` returns). `finish` then writes the preamble and header into a second temporary file,
//! appends the data, checks the result with the reader, and renames it over the target. A crash or
//! an error leaves no file under the target name.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::header::{EmbeddingConfig, Header, ModelConfig, PartEntry, Provenance, SectionEntry};
use super::reader::hex;
use super::tiles::EncodedTensor;
use super::validate::align_up;
use super::*;
use crate::files::{OutputTarget, TempPath};

/// Options for [`EtsWriter::create`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Replace an existing file at the target path.
    pub overwrite: bool,
}

/// An in-progress `.ets` file.
pub struct EtsWriter {
    target: PathBuf,
    data_path: PathBuf,
    final_tmp: PathBuf,
    data: Option<BufWriter<File>>,
    /// Bytes written to the data file so far (relative to the data start).
    written: u64,
    sections: Vec<SectionEntry>,
    alignment: u64,
    overwrite: bool,
    embedding: Option<EmbeddingConfig>,
    /// Registrations of the two temporary files, removed on drop (after the data file above is
    /// closed: fields drop in order) and on a signal.
    _temps: [TempPath; 2],
}

/// Refuses an existing target unless `overwrite`, and a target that is not a regular file always
/// (a device node or pipe is never replaced by a file).
fn check_target(target: &Path, overwrite: bool) -> Result<(), FormatError> {
    match OutputTarget::of(target) {
        OutputTarget::Absent => Ok(()),
        OutputTarget::Regular if overwrite => Ok(()),
        OutputTarget::Regular => Err(FormatError::OutputExists {
            path: target.to_path_buf(),
        }),
        OutputTarget::Special => Err(FormatError::OutputNotRegular {
            path: target.to_path_buf(),
        }),
    }
}

impl EtsWriter {
    /// Starts a file at `target` (nothing appears under that name until [`EtsWriter::finish`]).
    pub fn create(target: impl AsRef<Path>, options: WriteOptions) -> Result<Self, FormatError> {
        let target = target.as_ref().to_path_buf();
        check_target(&target, options.overwrite)?;
        let temps = [
            TempPath::beside(&target, "data"),
            TempPath::beside(&target, "tmp"),
        ];
        let data_path = temps[0].path().to_path_buf();
        let final_tmp = temps[1].path().to_path_buf();
        let file = File::create(&data_path).map_err(|e| FormatError::io(&data_path, e))?;
        Ok(EtsWriter {
            target,
            data_path,
            final_tmp,
            data: Some(BufWriter::with_capacity(1 << 20, file)),
            written: 0,
            sections: Vec::new(),
            alignment: MIN_ALIGNMENT,
            overwrite: options.overwrite,
            embedding: None,
            _temps: temps,
        })
    }

    fn check_name(&self, name: &str) -> Result<(), FormatError> {
        let printable = name.bytes().all(|b| (0x21..0x7f).contains(&b));
        if name.is_empty() || name.len() > MAX_NAME_LEN || !printable {
            return Err(FormatError::BadName {
                name: name.to_string(),
            });
        }
        if self.sections.iter().any(|s| s.name == name) {
            return Err(FormatError::DuplicateName {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn out(&mut self) -> Result<&mut BufWriter<File>, FormatError> {
        let path = self.data_path.clone();
        self.data
            .as_mut()
            .ok_or_else(|| FormatError::io(path, std::io::Error::other("writer already finished")))
    }

    /// Pads the data file with zeros up to the next aligned offset.
    fn pad(&mut self, hasher: Option<&mut Sha256>) -> Result<(), FormatError> {
        let target = align_up(self.written, self.alignment).unwrap_or(self.written);
        let zeros = vec![0u8; (target - self.written) as usize];
        if let Some(h) = hasher {
            h.update(&zeros);
        }
        let path = self.data_path.clone();
        self.out()?
            .write_all(&zeros)
            .map_err(|e| FormatError::io(path, e))?;
        self.written = target;
        Ok(())
    }

    fn write_hashed(&mut self, bytes: &[u8], hasher: &mut Sha256) -> Result<(), FormatError> {
        hasher.update(bytes);
        let path = self.data_path.clone();
        self.out()?
            .write_all(bytes)
            .map_err(|e| FormatError::io(path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends a tensor section. Offsets are relative to the data start until `finish`.
    pub fn add_tensor(&mut self, name: &str, tensor: &EncodedTensor) -> Result<(), FormatError> {
        self.check_name(name)?;
        let roles: Vec<_> = tensor.parts.iter().map(|(r, _)| *r).collect();
        if roles != tensor.encoding.part_roles() {
            return Err(FormatError::InvalidInput {
                detail: format!("tensor {name:?}: parts do not match its encoding"),
            });
        }
        self.pad(None)?;
        let start = self.written;
        let mut hasher = Sha256::new();
        let mut parts = Vec::with_capacity(tensor.parts.len());
        for (i, (role, bytes)) in tensor.parts.iter().enumerate() {
            if i > 0 {
                self.pad(Some(&mut hasher))?;
            }
            parts.push(PartEntry {
                role: *role,
                offset: self.written,
                length: bytes.len() as u64,
            });
            self.write_hashed(bytes, &mut hasher)?;
        }
        self.sections.push(SectionEntry {
            name: name.to_string(),
            kind: "tensor".into(),
            required: true,
            offset: start,
            length: self.written - start,
            sha256: hex(&hasher.finalize()),
            dtype: Some(tensor.dtype.name().to_string()),
            shape: Some(tensor.shape.clone()),
            encoding: Some(serde_json::to_value(tensor.encoding).map_err(|e| {
                FormatError::InvalidInput {
                    detail: e.to_string(),
                }
            })?),
            parts: Some(parts),
            format: None,
        });
        Ok(())
    }

    /// Appends an opaque section such as the tokenizer (`kind` "tokenizer", `format`
    /// "tokenizer.json" or "vocab.txt").
    pub fn add_blob(
        &mut self,
        name: &str,
        kind: &str,
        format: &str,
        bytes: &[u8],
        required: bool,
    ) -> Result<(), FormatError> {
        self.check_name(name)?;
        if bytes.is_empty() {
            return Err(FormatError::InvalidInput {
                detail: format!("section {name:?} is empty"),
            });
        }
        self.pad(None)?;
        let start = self.written;
        let mut hasher = Sha256::new();
        self.write_hashed(bytes, &mut hasher)?;
        self.sections.push(SectionEntry {
            name: name.to_string(),
            kind: kind.to_string(),
            required,
            offset: start,
            length: bytes.len() as u64,
            sha256: hex(&hasher.finalize()),
            dtype: None,
            shape: None,
            encoding: None,
            parts: None,
            format: Some(format.to_string()),
        });
        Ok(())
    }

    /// Records sentence-embedding settings in the header (format 1.1: the file is written with
    /// minor version 1). An empty configuration records nothing.
    pub fn set_embedding(&mut self, embedding: EmbeddingConfig) {
        self.embedding = (!embedding.is_empty()).then_some(embedding);
    }

    /// Header bytes with every offset shifted by `data_start`.
    fn header_bytes(&self, header: &Header, data_start: u64) -> Result<Vec<u8>, FormatError> {
        let mut h = header.clone();
        for s in &mut h.sections {
            s.offset += data_start;
            for p in s.parts.iter_mut().flatten() {
                p.offset += data_start;
            }
        }
        serde_json::to_vec(&h).map_err(|e| FormatError::InvalidInput {
            detail: e.to_string(),
        })
    }

    /// Writes the header, assembles the file, validates it, and renames it into place.
    pub fn finish(
        mut self,
        model: ModelConfig,
        recipe: serde_json::Value,
        provenance: Provenance,
    ) -> Result<(), FormatError> {
        let data = self.data.take();
        let data_file = match data {
            Some(w) => w
                .into_inner()
                .map_err(|e| FormatError::io(&self.data_path, e.into_error()))?,
            None => {
                return Err(FormatError::io(
                    &self.data_path,
                    std::io::Error::other("finished twice"),
                ))
            }
        };
        drop(data_file);
        let header = Header {
            alignment: self.alignment,
            model,
            recipe,
            provenance,
            embedding: self.embedding.take(),
            sections: std::mem::take(&mut self.sections),
        };
        // The header holds absolute offsets, whose digits change its length: iterate to a fixpoint.
        let mut data_start = align_up(PREAMBLE_LEN, self.alignment).unwrap_or(PREAMBLE_LEN);
        let mut bytes = self.header_bytes(&header, data_start)?;
        loop {
            let needed = align_up(PREAMBLE_LEN + bytes.len() as u64, self.alignment).unwrap_or(0);
            if needed == data_start {
                break;
            }
            data_start = needed;
            bytes = self.header_bytes(&header, data_start)?;
        }
        if bytes.len() as u64 > MAX_HEADER_LEN {
            return Err(FormatError::HeaderTooLarge {
                len: bytes.len() as u64,
                max: MAX_HEADER_LEN,
            });
        }
        let data_len = if header.sections.is_empty() {
            0
        } else {
            self.written
        };
        let file_len = data_start + data_len;
        let file_len = if data_len == 0 {
            PREAMBLE_LEN + bytes.len() as u64
        } else {
            file_len
        };
        let minor = if header.embedding.is_some() {
            VERSION_MINOR_EMBEDDING
        } else {
            VERSION_MINOR
        };
        self.assemble(&bytes, data_start, file_len, minor)?;
        // Never leave an invalid file under the target name: check it as a reader would.
        super::EtsFile::open(&self.final_tmp)?;
        check_target(&self.target, self.overwrite)?;
        fs::rename(&self.final_tmp, &self.target).map_err(|e| FormatError::io(&self.target, e))?;
        Ok(())
    }

    fn assemble(
        &self,
        header: &[u8],
        data_start: u64,
        file_len: u64,
        minor: u16,
    ) -> Result<(), FormatError> {
        let io = |e| FormatError::io(&self.final_tmp, e);
        let mut out = File::create(&self.final_tmp).map_err(io)?;
        let mut pre = Vec::with_capacity(PREAMBLE_LEN as usize);
        pre.extend_from_slice(&MAGIC);
        pre.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        pre.extend_from_slice(&minor.to_le_bytes());
        pre.extend_from_slice(&ENDIAN_MARKER.to_le_bytes());
        pre.extend_from_slice(&(header.len() as u64).to_le_bytes());
        pre.extend_from_slice(&file_len.to_le_bytes());
        let digest = super::validate::header_digest(&pre, header);
        pre.extend_from_slice(&digest);
        out.write_all(&pre).map_err(io)?;
        out.write_all(header).map_err(io)?;
        if file_len > PREAMBLE_LEN + header.len() as u64 {
            let pad = data_start - PREAMBLE_LEN - header.len() as u64;
            out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            let mut data =
                File::open(&self.data_path).map_err(|e| FormatError::io(&self.data_path, e))?;
            std::io::copy(&mut data, &mut out).map_err(io)?;
        }
        let end = out.stream_position().map_err(io)?;
        if end != file_len {
            return Err(io(std::io::Error::other(format!(
                "wrote {end} bytes, expected {file_len}"
            ))));
        }
        out.sync_all().map_err(io)?;
        Ok(())
    }
}
