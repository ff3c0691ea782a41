//! The runtime's options ([`CudaOptions`]) and the on-disk cache of dispatch decisions
//! ([`TuningCache`]).
//!
//! The dispatcher times the tile kernels against cuBLAS the first time it sees a weight at a
//! token bucket. With the tuning cache on, the decision is written to `tuning-v3.json` beside the
//! kernel cache, so a second process on the same GPU runs the same kernel without timing again.
//! A decision is keyed by GPU name, compute capability, element type, N x K, tile shape, the
//! SHA-256 of the weight's bitmap and the token bucket: a different mask, GPU or shape misses.
//!
//! ```
//! use ets::runtime::cuda::tuning::{TuneEntry, TuneKey, TuningCache};
//! let dir = tempfile::tempdir().unwrap();
//! let key = TuneKey {
//!     gpu: "NVIDIA H100".into(), arch: "sm_90".into(), dtype: "f16".into(),
//!     n: 768, k: 3072, th: 64, tw: 64, mask_sha256: [7; 32], tokens: 4096,
//! };
//! let cache = TuningCache::open(dir.path());
//! cache.put(&key, TuneEntry { kernel: None, tile_ms: Some(0.2), dense_ms: Some(0.1) }).unwrap();
//! assert_eq!(TuningCache::open(dir.path()).get(&key).unwrap().dense_ms, Some(0.1));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::CudaError;
use super::tile::TileKernel;

/// Options of the CUDA runtime's dispatch. The default measures each weight once and keeps the
/// decisions on disk beside the kernel cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaOptions {
    /// Run every linear layer through cuBLAS (tile weights on a dense copy); nothing is timed.
    pub force_cublas: bool,
    /// Run every tile weight with this kernel where it can run the weight (elsewhere the
    /// dispatcher decides as usual); nothing is timed for those weights.
    pub force_kernel: Option<TileKernel>,
    /// Read and write the on-disk tuning cache ([`TuningCache`]). Off: every process times anew.
    pub tuning_cache: bool,
    /// Directory of the tuning cache; None: the kernel cache's ([`super::nvrtc::cache_dir`]).
    pub cache_dir: Option<PathBuf>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            force_cublas: false,
            force_kernel: None,
            tuning_cache: true,
            cache_dir: None,
        }
    }
}

/// Version of the tuning file's layout; a file of another version is ignored (and rewritten).
pub const TUNING_VERSION: u32 = 3;
/// File name of the tuning cache in its directory.
pub const TUNING_FILE: &str = "tuning-v3.json";

/// What identifies one dispatch decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuneKey {
    /// GPU name as the driver reports it.
    pub gpu: String,
    /// Compute capability as an architecture name (`sm_90`).
    pub arch: String,
    /// Element type (`f16`, `bf16`).
    pub dtype: String,
    /// Out features.
    pub n: usize,
    /// In features.
    pub k: usize,
    /// Tile height.
    pub th: usize,
    /// Tile width.
    pub tw: usize,
    /// SHA-256 of the tile bitmap.
    pub mask_sha256: [u8; 32],
    /// Token bucket (a power of two).
    pub tokens: usize,
}

impl TuneKey {
    /// The key as stored. It ends with the labels of every tile kernel the library has, so a
    /// decision made before a kernel was added is measured again rather than reused.
    fn text(&self) -> String {
        let kernels: Vec<&str> = TileKernel::ALL.iter().map(|k| k.label()).collect();
        format!(
            "{}|{}|{}|{}x{}|{}x{}|{}|{}|{}",
            self.gpu,
            self.arch,
            self.dtype,
            self.n,
            self.k,
            self.th,
            self.tw,
            crate::format::hex(&self.mask_sha256),
            self.tokens,
            kernels.join(",")
        )
    }
}

/// One stored decision: the tile kernel to run (None: cuBLAS) and the times it was chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// The fastest tile kernel when it beat cuBLAS, else None.
    pub kernel: Option<TileKernel>,
    /// That kernel's milliseconds (the fastest tile kernel's, when cuBLAS won).
    pub tile_ms: Option<f64>,
    /// cuBLAS milliseconds.
    pub dense_ms: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TuneFile {
    version: u32,
    entries: BTreeMap<String, TuneEntry>,
}

/// The dispatch decisions of one directory, loaded once and written back on each new decision.
#[derive(Debug)]
pub struct TuningCache {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, TuneEntry>>,
    warning: Option<String>,
}

impl TuningCache {
    /// Loads `dir/tuning-v3.json`. A missing file is an empty cache; an unreadable, corrupt or
    /// other-version file is ignored with a warning on stderr ([`TuningCache::warning`]) and
    /// replaced at the next write.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(TUNING_FILE);
        let (entries, warning) = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), None),
            Err(e) => (BTreeMap::new(), Some(format!("{}: {e}", path.display()))),
            Ok(bytes) => match serde_json::from_slice::<TuneFile>(&bytes) {
                Ok(f) if f.version == TUNING_VERSION => (f.entries, None),
                Ok(f) => (
                    BTreeMap::new(),
                    Some(format!(
                        "{}: version {} (expected {TUNING_VERSION})",
                        path.display(),
                        f.version
                    )),
                ),
                Err(e) => (BTreeMap::new(), Some(format!("{}: {e}", path.display()))),
            },
        };
        if let Some(w) = &warning {
            eprintln!("warning: tuning cache ignored: {w}");
        }
        TuningCache {
            path,
            entries: Mutex::new(entries),
            warning,
        }
    }

    /// Why the file on disk was ignored, if it was.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// The stored decision for `key`.
    pub fn get(&self, key: &TuneKey) -> Option<TuneEntry> {
        self.entries.lock().ok()?.get(&key.text()).copied()
    }

    /// Stores a decision and writes the file (a temporary file renamed into place, so a
    /// concurrent reader never sees half a file).
    pub fn put(&self, key: &TuneKey, entry: TuneEntry) -> Result<(), CudaError> {
        let io = |e: std::io::Error| CudaError::Invalid(format!("{}: {e}", self.path.display()));
        let file = {
            let mut entries = self
                .entries
                .lock()
                .map_err(|_| CudaError::Invalid("tuning cache lock poisoned".into()))?;
            entries.insert(key.text(), entry);
            TuneFile {
                version: TUNING_VERSION,
                entries: entries.clone(),
            }
        };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| CudaError::Invalid(format!("tuning cache: {e}")))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TuneKey {
        TuneKey {
            gpu: "NVIDIA H200".into(),
            arch: "sm_90".into(),
            dtype: "f16".into(),
            n: 3072,
            k: 768,
            th: 16,
            tw: 16,
            mask_sha256: [0xAB; 32],
            tokens: 4096,
        }
    }

    fn entry() -> TuneEntry {
        TuneEntry {
            kernel: Some(TileKernel::Rs),
            // Times as measured: every bit must survive the file (a value the default JSON
            // float parser reads back one unit in the last place off).
            tile_ms: Some(0.020630399882793426),
            dense_ms: Some(0.08),
        }
    }

    #[test]
    fn round_trip_through_a_second_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = TuningCache::open(dir.path());
        assert!(c.warning().is_none());
        assert_eq!(c.get(&key()), None);
        c.put(&key(), entry()).expect("put");
        let again = TuningCache::open(dir.path());
        assert!(again.warning().is_none());
        assert_eq!(again.get(&key()), Some(entry()));
        let text = std::fs::read_to_string(dir.path().join(TUNING_FILE)).expect("read");
        assert!(
            text.contains(&format!("\"version\": {TUNING_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn a_changed_key_misses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let c = TuningCache::open(dir.path());
        c.put(&key(), entry()).expect("put");
        let changes: [fn(&mut TuneKey); 8] = [
            |k| k.gpu = "NVIDIA A100".into(),
            |k| k.arch = "sm_80".into(),
            |k| k.dtype = "bf16".into(),
            |k| k.n = 768,
            |k| k.k = 3072,
            |k| k.th = 64,
            |k| k.mask_sha256[31] ^= 1,
            |k| k.tokens = 8192,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut k = key();
            change(&mut k);
            assert_eq!(c.get(&k), None, "change {i} still hits");
        }
        assert_eq!(c.get(&key()), Some(entry()));
    }

    #[test]
    fn a_corrupt_or_other_version_file_is_ignored_with_a_warning_and_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(TUNING_FILE);
        std::fs::write(&path, b"{\"version\": 1, \"entries\": {\"x\": ").expect("write");
        let c = TuningCache::open(dir.path());
        assert!(c.warning().is_some());
        assert_eq!(c.get(&key()), None);
        c.put(&key(), entry())
            .expect("put replaces the corrupt file");
        assert_eq!(TuningCache::open(dir.path()).get(&key()), Some(entry()));

        std::fs::write(&path, b"{\"version\": 99, \"entries\": {}}").expect("write");
        let c = TuningCache::open(dir.path());
        assert!(c.warning().is_some_and(|w| w.contains("version 99")));
        assert_eq!(c.get(&key()), None);
    }
}
