//! The native part of the `ets` Python module (`ets._ets`); `ets/__init__.py` wraps it in the
//! public API. Every failure raises `ets.EtsError` with the library's message, prefixed by the
//! file's path where `et-run` prefixes it.

use std::path::PathBuf;
use std::sync::Arc;

use ets::format::{EtsFile, TensorData, TensorView};
use ets::runtime::embed::{pooling_from_name, pooling_name, Overrides};
use ets::runtime::shared::{Device, SharedEmbedder};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(_ets, EtsError, PyException, "An error of the ets library.");

fn err(message: impl std::fmt::Display) -> PyErr {
    EtsError::new_err(message.to_string())
}

fn open_file(path: &str) -> PyResult<Arc<EtsFile>> {
    EtsFile::open(PathBuf::from(path))
        .map(Arc::new)
        .map_err(|e| err(format!("{path}: {e}")))
}

/// An open, validated `.ets` file.
#[pyclass(frozen, module = "ets._ets")]
struct File {
    file: Arc<EtsFile>,
    path: String,
}

impl File {
    fn view(&self, name: &str) -> PyResult<TensorView<'_>> {
        self.file.tensor(name).map_err(err)
    }
}

#[pymethods]
impl File {
    #[new]
    fn new(path: &str) -> PyResult<File> {
        Ok(File {
            file: open_file(path)?,
            path: path.to_string(),
        })
    }

    /// The path the file was opened from.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// The header as JSON.
    fn header_json(&self) -> PyResult<String> {
        serde_json::to_string(self.file.header()).map_err(err)
    }

    /// Canonical tensor names in file order.
    fn tensor_names(&self) -> Vec<String> {
        self.file.tensors().map(|t| t.name.to_string()).collect()
    }

    /// `(dtype, shape, encoding)` of a tensor.
    fn tensor_info(&self, name: &str) -> PyResult<(String, Vec<u64>, String)> {
        let t = self.view(name)?;
        Ok((
            t.dtype.name().to_string(),
            t.shape.to_vec(),
            t.encoding.short_name().to_string(),
        ))
    }

    /// The tensor as dense row-major little-endian f32 bytes and its shape.
    fn tensor_f32<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u64>)> {
        let t = self.view(name)?;
        let dense = t.to_dense_f32();
        Ok((
            PyBytes::new(py, bytemuck::cast_slice(&dense)),
            t.shape.to_vec(),
        ))
    }

    /// The layout of a `tile` tensor: `(rows, cols, tile_rows, tile_cols, grid_rows, grid_cols,
    /// dtype, parts)`, where `parts` lists `(role, file offset, length in bytes)`.
    #[allow(clippy::type_complexity)]
    fn tile_layout(
        &self,
        name: &str,
    ) -> PyResult<(
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        String,
        Vec<(String, u64, u64)>,
    )> {
        let t = self.view(name)?;
        let TensorData::Tile(v) = t.data else {
            return Err(err(format!(
                "tensor `{name}` is stored as {}, not in tiles",
                t.encoding.short_name()
            )));
        };
        let entry = self
            .file
            .header()
            .sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| err(format!("tensor `{name}` has no section entry")))?;
        let parts = entry
            .parts
            .iter()
            .flatten()
            .map(|p| (p.role.name().to_string(), p.offset, p.length))
            .collect();
        Ok((
            v.rows,
            v.cols,
            v.tile_rows,
            v.tile_cols,
            v.grid_rows,
            v.grid_cols,
            v.dtype.name().to_string(),
            parts,
        ))
    }

    /// Checks every section's SHA-256.
    fn verify(&self) -> PyResult<()> {
        self.file
            .verify_checksums()
            .map_err(|e| err(format!("{}: {e}", self.path)))
    }
}

/// A sentence encoder with the file's tokenizer and embedding settings. It may be shared by
/// Python threads: `encode` releases the GIL while it tokenizes and runs the model.
#[pyclass(frozen, module = "ets._ets")]
struct Encoder {
    inner: SharedEmbedder,
}

#[pymethods]
impl Encoder {
    #[new]
    #[pyo3(signature = (path, device, pooling=None, normalize=None, max_length=None))]
    fn new(
        path: &str,
        device: &str,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_length: Option<usize>,
    ) -> PyResult<Encoder> {
        let device = Device::from_name(device).map_err(err)?;
        let pooling = match pooling {
            None => None,
            Some(name) => Some(
                pooling_from_name(name)
                    .ok_or_else(|| err(format!("unknown pooling {name:?} (known: mean, cls)")))?,
            ),
        };
        let overrides = Overrides {
            pooling,
            normalize,
            max_length,
        };
        let inner = SharedEmbedder::new(open_file(path)?, device, &overrides).map_err(err)?;
        inner.tokenizer().map_err(|e| err(format!("{path}: {e}")))?;
        Ok(Encoder { inner })
    }

    /// The runtime in use: `cpu` or `cuda`.
    #[getter]
    fn device(&self) -> &'static str {
        self.inner.device()
    }

    /// Why `auto` fell back to the CPU, if it did.
    #[getter]
    fn fallback_reason(&self) -> Option<String> {
        self.inner.fallback_reason().map(str::to_string)
    }

    /// Width of one embedding.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    /// `(pooling, normalize, max_length)` in use.
    fn settings(&self) -> (&'static str, bool, usize) {
        let s = self.inner.settings();
        (pooling_name(s.pooling), s.normalize, s.max_length)
    }

    /// Embeddings of `texts` as little-endian f32 bytes, `len(texts) * hidden_size` values,
    /// and the truncated inputs as `(index, tokens before, tokens kept)`.
    #[allow(clippy::type_complexity)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<(usize, usize, usize)>)> {
        if batch_size == 0 {
            return Err(err("batch_size must be at least 1"));
        }
        let inner = &self.inner;
        let (tokenized, vectors) = py
            .detach(|| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let tokenized = inner.tokenizer().and_then(|t| t.encode(&refs))?;
                let vectors = inner.embed_tokens(&tokenized.batch, batch_size)?;
                Ok::<_, ets::runtime::RuntimeError>((tokenized, vectors))
            })
            .map_err(err)?;
        let truncated = tokenized
            .truncated
            .iter()
            .map(|t| (t.index, t.original_len, t.kept_len))
            .collect();
        Ok((PyBytes::new(py, bytemuck::cast_slice(&vectors)), truncated))
    }
}

#[pymodule]
fn _ets(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EtsError", m.py().get_type::<EtsError>())?;
    m.add_class::<File>()?;
    m.add_class::<Encoder>()?;
    Ok(())
}
