//! Model folders as Hugging Face and sentence-transformers lay them out.
//!
//! A Hugging Face folder holds `config.json`, the weights (`model.safetensors`, or shards
//! `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`, or an ONNX export as
//! `model.onnx` or `onnx/model.onnx`) and the tokenizer (`tokenizer.json` or `vocab.txt`). A
//! sentence-transformers folder adds `modules.json` (the pipeline: Transformer, Pooling,
//! Normalize), `1_Pooling/config.json` and `sentence_bert_config.json` (`max_seq_length`); its
//! Transformer module may live in a subfolder such as `0_Transformer`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::IngestError;
use crate::files::{self, MAX_CONFIG_BYTES};
use crate::format::EmbeddingConfig;

/// What a sentence-transformers folder says about its embeddings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentenceTransformers {
    /// The settings ets records (pooling, normalization, maximum length) where it can apply them.
    pub embedding: EmbeddingConfig,
    /// The folder of the Transformer module (the model's weights and config).
    pub transformer_dir: PathBuf,
    /// Parts of the pipeline ets does not apply, in words (a Dense layer, max pooling, ...).
    pub warnings: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value, IngestError> {
    let bytes = files::read_capped(path, MAX_CONFIG_BYTES).map_err(|e| IngestError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| IngestError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A relative path from a configuration file, refused when it could leave `dir`.
fn inside(dir: &Path, cfg: &Path, rel: &str) -> Result<PathBuf, IngestError> {
    let p = Path::new(rel);
    let ok = p.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !ok {
        return Err(IngestError::Config {
            path: cfg.to_path_buf(),
            reason: format!("module path {rel:?} leaves the model's folder"),
        });
    }
    Ok(dir.join(p))
}

/// Reads `modules.json` and the Pooling and sentence-BERT configurations of a folder; `None` when
/// the folder has no `modules.json`.
pub fn sentence_transformers(dir: &Path) -> Result<Option<SentenceTransformers>, IngestError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok(None);
    }
    let modules = read_json(&modules_path)?;
    let list = modules.as_array().ok_or_else(|| IngestError::Config {
        path: modules_path.clone(),
        reason: "expected an array of modules".into(),
    })?;
    let mut out = SentenceTransformers {
        transformer_dir: dir.to_path_buf(),
        ..SentenceTransformers::default()
    };
    let mut normalize = false;
    for (i, m) in list.iter().enumerate() {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
        let rel = m.get("path").and_then(Value::as_str).unwrap_or("");
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match short {
            "Transformer" if i == 0 => out.transformer_dir = inside(dir, &modules_path, rel)?,
            "Pooling" => {
                let cfg = inside(dir, &modules_path, rel)?.join("config.json");
                pooling(&cfg, &mut out)?;
            }
            "Normalize" => normalize = true,
            _ => out.warnings.push(format!(
                "modules.json lists a {short} module ({kind}), which ets does not apply: \
                 embeddings will differ from sentence-transformers"
            )),
        }
    }
    out.embedding.normalize = Some(normalize);
    for name in ["sentence_bert_config.json", "sentence_roberta_config.json"] {
        let p = out.transformer_dir.join(name);
        let p = if p.is_file() { p } else { dir.join(name) };
        if p.is_file() {
            let v = read_json(&p)?;
            if let Some(n) = v.get("max_seq_length").and_then(Value::as_u64) {
                out.embedding.max_length = u32::try_from(n).ok().filter(|&n| n > 0);
            }
            break;
        }
    }
    Ok(Some(out))
}

/// Reads a Pooling module's `config.json` into the pooling setting.
fn pooling(cfg: &Path, out: &mut SentenceTransformers) -> Result<(), IngestError> {
    let v = read_json(cfg)?;
    let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<&str> = [
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_weightedmean_tokens", "weightedmean"),
        ("pooling_mode_lasttoken", "lasttoken"),
    ]
    .iter()
    .filter(|(k, _)| on(k))
    .map(|(_, name)| *name)
    .collect();
    match modes[..] {
        [one] if one == "mean" || one == "cls" => out.embedding.pooling = Some(one.to_string()),
        _ => out.warnings.push(format!(
            "{}: pooling {modes:?} is not supported (mean or cls alone); no pooling recorded, \
             et-run will use mean pooling unless told otherwise",
            cfg.display()
        )),
    }
    Ok(())
}

/// The model file inside a folder: `model.safetensors`, the shard index, `model.onnx`,
/// `onnx/model.onnx`, or the folder's only `.safetensors` or `.onnx` file. A folder with only
/// PyTorch pickles is refused with the way out.
pub fn model_file(dir: &Path) -> Result<PathBuf, IngestError> {
    let named = [
        "model.safetensors",
        "model.safetensors.index.json",
        "model.onnx",
        "onnx/model.onnx",
    ];
    if let Some(p) = named.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Ok(p);
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| IngestError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    let with_ext = |ext: &[&str]| -> Vec<&PathBuf> {
        entries
            .iter()
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ext.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect()
    };
    for ext in [["safetensors"], ["onnx"]] {
        if let [one] = with_ext(&ext)[..] {
            return Ok(one.clone());
        }
    }
    let pickles = with_ext(&["bin", "pt", "pth", "ckpt"]);
    if let Some(p) = pickles.first() {
        return Err(IngestError::PickleOnly {
            dir: dir.to_path_buf(),
            file: p.file_name().map(PathBuf::from).unwrap_or_default(),
        });
    }
    Err(IngestError::NoModelInFolder {
        dir: dir.to_path_buf(),
    })
}
