//! Hugging Face BERT checkpoints in safetensors format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorInfo};
use safetensors::SafeTensors;

use super::config::read_hf_config;
use super::{
    canonical_names, check_shapes, find_tokenizer, map_file, IngestError, IngestOptions,
    ModelSource, SourceProvenance, SourceTensor, TokenizerBlob,
};
use crate::format::names::{self, LayerTensor};
use crate::format::{ModelConfig, Provenance};

/// One mapped `.safetensors` file.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
}

/// A mapped `.safetensors` model (one file, or the shards listed by a
/// `model.safetensors.index.json`) with Hugging Face BERT names and its `config.json`.
pub struct SafetensorsSource {
    path: PathBuf,
    shards: Vec<Shard>,
    /// Source name -> (shard, tensor info).
    infos: HashMap<String, (usize, TensorInfo)>,
    /// Canonical name -> source name, for the tensors present.
    sources: Vec<(String, String)>,
    config: ModelConfig,
    provenance: SourceProvenance,
    tokenizer: Option<TokenizerBlob>,
}

/// Source-name candidates (without the model prefix) of a canonical tensor, newest name first.
fn candidates(canonical: &str) -> Vec<String> {
    let ln = |base: &str, w: bool| -> Vec<String> {
        if w {
            vec![format!("{base}.weight"), format!("{base}.gamma")]
        } else {
            vec![format!("{base}.bias"), format!("{base}.beta")]
        }
    };
    match canonical {
        names::WORD_EMBEDDINGS => return vec!["embeddings.word_embeddings.weight".into()],
        names::POSITION_EMBEDDINGS => return vec!["embeddings.position_embeddings.weight".into()],
        names::TOKEN_TYPE_EMBEDDINGS => {
            return vec!["embeddings.token_type_embeddings.weight".into()]
        }
        names::EMBEDDINGS_LN_WEIGHT => return ln("embeddings.LayerNorm", true),
        names::EMBEDDINGS_LN_BIAS => return ln("embeddings.LayerNorm", false),
        names::POOLER_WEIGHT => return vec!["pooler.dense.weight".into()],
        names::POOLER_BIAS => return vec!["pooler.dense.bias".into()],
        _ => {}
    }
    let Some((layer, t)) = parse_layer_name(canonical) else {
        return Vec::new();
    };
    let base = format!("encoder.layer.{layer}.");
    let one = |s: &str| vec![format!("{base}{s}")];
    match t {
        LayerTensor::QueryWeight => one("attention.self.query.weight"),
        LayerTensor::QueryBias => one("attention.self.query.bias"),
        LayerTensor::KeyWeight => one("attention.self.key.weight"),
        LayerTensor::KeyBias => one("attention.self.key.bias"),
        LayerTensor::ValueWeight => one("attention.self.value.weight"),
        LayerTensor::ValueBias => one("attention.self.value.bias"),
        LayerTensor::OutputWeight => one("attention.output.dense.weight"),
        LayerTensor::OutputBias => one("attention.output.dense.bias"),
        LayerTensor::AttentionLnWeight => ln(&format!("{base}attention.output.LayerNorm"), true),
        LayerTensor::AttentionLnBias => ln(&format!("{base}attention.output.LayerNorm"), false),
        LayerTensor::IntermediateWeight => one("intermediate.dense.weight"),
        LayerTensor::IntermediateBias => one("intermediate.dense.bias"),
        LayerTensor::FfnOutputWeight => one("output.dense.weight"),
        LayerTensor::FfnOutputBias => one("output.dense.bias"),
        LayerTensor::FfnLnWeight => ln(&format!("{base}output.LayerNorm"), true),
        LayerTensor::FfnLnBias => ln(&format!("{base}output.LayerNorm"), false),
    }
}

/// Splits `layers.{i}.{suffix}` into the layer index and tensor kind.
pub(crate) fn parse_layer_name(name: &str) -> Option<(usize, LayerTensor)> {
    let rest = name.strip_prefix("layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer = idx.parse().ok()?;
    let t = LayerTensor::ALL.iter().find(|t| t.suffix() == suffix)?;
    Some((layer, *t))
}

/// Encoder layers the weights hold: the distinct `encoder.layer.N` indices, which must be 0 to
/// N-1 (a file whose indices skip is refused before anything is sized by the largest one).
fn weight_layers(
    path: &Path,
    infos: &HashMap<String, (usize, TensorInfo)>,
    prefix: &str,
) -> Result<u32, IngestError> {
    let head = format!("{prefix}encoder.layer.");
    let indices: std::collections::BTreeSet<u64> = infos
        .keys()
        .filter_map(|k| {
            k.strip_prefix(&head)?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .collect();
    let count = indices.len() as u64;
    match indices.last() {
        Some(&last) if last + 1 != count => Err(IngestError::Shapes {
            path: path.to_path_buf(),
            problems: vec![format!(
                "the weights hold {count} encoder layers numbered up to {last}: layers are missing"
            )],
        }),
        _ => Ok(count as u32),
    }
}

/// Whether `path` names a shard index (`*.safetensors.index.json`).
pub(crate) fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".safetensors.index.json"))
}

/// The shard files an index lists (its `weight_map` values, in order of first appearance). Each
/// must be a plain file name of a regular file in the index's folder.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, IngestError> {
    let bad = |reason: String| IngestError::Safetensors {
        path: index.to_path_buf(),
        reason,
    };
    let text = crate::files::read_capped(index, crate::files::MAX_CONFIG_BYTES * 16)
        .map_err(|e| IngestError::io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let dir = super::model_dir(index);
    let mut files: Vec<PathBuf> = Vec::new();
    for value in map.values() {
        let name = value
            .as_str()
            .ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
        let plain = Path::new(name).file_name().and_then(|n| n.to_str()) == Some(name);
        if !plain {
            return Err(bad(format!(
                "shard {name:?} is not a file name in the index's folder"
            )));
        }
        let p = dir.join(name);
        if !files.contains(&p) {
            crate::files::confined_file(&dir, &p)
                .map_err(|reason| bad(format!("shard {name:?}: {reason}")))?;
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(bad("the weight_map is empty".into()));
    }
    Ok(files)
}

/// Maps one safetensors file and validates it fully (offsets inside the file, no overlap).
fn open_shard(path: &Path) -> Result<(Shard, Vec<(String, TensorInfo)>), IngestError> {
    let map = map_file(path)?;
    let st_err = |e: safetensors::SafeTensorError| IngestError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("{e:?}"),
    };
    SafeTensors::deserialize(&map).map_err(st_err)?;
    let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(st_err)?;
    let infos = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let shard = Shard {
        path: path.to_path_buf(),
        map,
        data_start: 8 + header_len,
    };
    Ok((shard, infos))
}

fn dtype_ok(d: StDtype) -> bool {
    matches!(d, StDtype::F32 | StDtype::F16 | StDtype::BF16)
}

impl SafetensorsSource {
    /// Maps `path` (a `.safetensors` file, or a `*.safetensors.index.json` naming shards beside
    /// it), reads its config, checks every tensor's presence and shape.
    pub fn open(path: &Path, opts: &IngestOptions) -> Result<Self, IngestError> {
        let files = if is_index(path) {
            shard_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut all: HashMap<String, (usize, TensorInfo)> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let (shard, infos) = open_shard(file)?;
            for (name, info) in infos {
                if all.insert(name.clone(), (i, info)).is_some() {
                    return Err(IngestError::Safetensors {
                        path: file.clone(),
                        reason: format!("tensor {name} is stored in two shards"),
                    });
                }
            }
            shards.push(shard);
        }
        let infos = all;

        let cfg_path = match &opts.config {
            Some(p) => p.clone(),
            None => path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("config.json"),
        };
        if !cfg_path.is_file() {
            return Err(IngestError::MissingConfig {
                model: path.to_path_buf(),
            });
        }
        let prefix = ["bert.", "", "model."]
            .into_iter()
            .find(|p| infos.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
            .unwrap_or("");
        let hf = read_hf_config(&cfg_path, weight_layers(path, &infos, prefix)?)?;
        let mut config = hf.model;

        let resolve = |canonical: &str| -> Option<String> {
            let mut c = candidates(canonical);
            if canonical == names::CLASSIFIER_WEIGHT || canonical == names::CLASSIFIER_BIAS {
                let leaf = canonical.trim_start_matches("classifier.");
                c = vec![format!("classifier.{leaf}")];
                return c.into_iter().find(|n| infos.contains_key(n));
            }
            c.into_iter()
                .map(|n| format!("{prefix}{n}"))
                .find(|n| infos.contains_key(n))
        };
        let mut problems = Vec::new();
        let pooler =
            resolve(names::POOLER_WEIGHT).is_some() || resolve(names::POOLER_BIAS).is_some();
        let classifier =
            infos.contains_key("classifier.weight") || infos.contains_key("classifier.bias");
        if let Some((_, info)) = infos.get("classifier.weight") {
            let rows = info.shape.first().copied().unwrap_or(0) as u32;
            if let Some(d) = hf.declared_labels {
                if d != rows && d > 0 {
                    problems.push(format!(
                        "classifier.weight has {rows} rows but config declares {d} labels"
                    ));
                }
            }
            config.num_labels = Some(rows);
        } else if classifier {
            config.num_labels = hf.declared_labels;
        }
        let wanted = canonical_names(config.num_layers as usize, pooler, classifier);
        let sources: Vec<(String, String)> = wanted
            .iter()
            .filter_map(|c| resolve(c).map(|s| (c.clone(), s)))
            .collect();
        for (c, s) in &sources {
            if let Some((_, info)) = infos.get(s) {
                if !dtype_ok(info.dtype) {
                    return Err(IngestError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        tensor: format!("{s} ({c})"),
                        dtype: format!("{:?}", info.dtype),
                    });
                }
            }
        }
        let shape_of = |c: &str| {
            let s = sources.iter().find(|(k, _)| k == c).map(|(_, s)| s)?;
            infos.get(s).map(|(_, i)| (s.clone(), i.shape.clone()))
        };
        if let Err(IngestError::Shapes { problems: p, .. }) =
            check_shapes(path, &config, &wanted, shape_of)
        {
            problems.extend(p);
        }
        if !problems.is_empty() {
            return Err(IngestError::Shapes {
                path: path.to_path_buf(),
                problems: super::error::cap_problems(problems),
            });
        }
        let provenance = SourceProvenance::start_files(path, files);
        let tokenizer = find_tokenizer(path, opts)?;
        Ok(SafetensorsSource {
            path: path.to_path_buf(),
            shards,
            infos,
            sources,
            config,
            provenance,
            tokenizer,
        })
    }
}

impl ModelSource for SafetensorsSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tensor_names(&self) -> Vec<String> {
        self.sources.iter().map(|(c, _)| c.clone()).collect()
    }

    fn load(&self, name: &str) -> Result<SourceTensor, IngestError> {
        let no_such = || IngestError::NoSuchTensor {
            path: self.path.clone(),
            name: name.to_string(),
        };
        let src = self
            .sources
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, s)| s)
            .ok_or_else(no_such)?;
        let (shard, info) = self.infos.get(src).ok_or_else(no_such)?;
        let shard = self.shards.get(*shard).ok_or_else(no_such)?;
        let bad = |reason: String| IngestError::BadTensor {
            path: shard.path.clone(),
            tensor: src.clone(),
            reason,
        };
        let (a, b) = info.data_offsets;
        let bytes = shard
            .data_start
            .checked_add(a)
            .zip(shard.data_start.checked_add(b))
            .and_then(|(a, b)| shard.map.get(a..b))
            .ok_or_else(|| bad(format!("data offsets {a}..{b} outside the file")))?;
        let count: usize = info.shape.iter().product();
        let data = decode(info.dtype, bytes)
            .ok_or_else(|| bad(format!("{:?} data of {} bytes", info.dtype, bytes.len())))?;
        release_pages(&shard.map, shard.data_start + a, bytes.len());
        if data.len() != count {
            return Err(bad(format!(
                "{} values for shape {:?}",
                data.len(),
                info.shape
            )));
        }
        Ok(SourceTensor {
            shape: info.shape.clone(),
            data,
        })
    }

    fn provenance(&self) -> Provenance {
        self.provenance.get()
    }

    fn tokenizer(&self) -> Option<TokenizerBlob> {
        self.tokenizer.clone()
    }
}

/// Little-endian f32/f16/bf16 bytes to f32 (no alignment needed).
/// Drops the pages of a tensor already decoded from the process's resident set, so converting a
/// model keeps about one tensor of the mapped source resident instead of the whole file.
fn release_pages(map: &memmap2::Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the mapping is a read-only mapping of a file: after MADV_DONTNEED a later read
        // of the range faults the same bytes back in from the file, so no live slice can observe a
        // change. The range lies inside the map (checked by the caller's `get`).
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

fn decode(dtype: StDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        StDtype::F32 if bytes.len() % 4 == 0 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        StDtype::F16 if bytes.len() % 2 == 0 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        StDtype::BF16 if bytes.len() % 2 == 0 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}
