//! Writes a BERT-base-sized f32 safetensors checkpoint (12 layers, hidden 768, 12 heads, FFN 3072,
//! vocab 30522, 512 positions, with pooler; about 440 MB) and its `config.json` into a folder, for
//! conversion benchmarks. The weights are random but deterministic (seeded per tensor name), and
//! the file is streamed tensor by tensor, so the generator never holds the whole model.
//!
//! `cargo run --release -p ets-dev --bin et-gen-bert-base -- DIR [--layers N]`

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, ModelConfig};
use ets_testkit::rng::Rng;
use ets_testkit::sources::{hf_config_json, hf_name};

fn bert_base(layers: u32) -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: layers,
        hidden_size: 768,
        num_heads: 12,
        head_dim: 64,
        heads_per_layer: vec![12; layers as usize],
        intermediate_size: 3072,
        vocab_size: 30522,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

/// Canonical names and shapes, in file order.
fn tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size as usize;
    let mut out = vec![
        (
            names::WORD_EMBEDDINGS.to_string(),
            vec![cfg.vocab_size as usize, h],
        ),
        (
            names::POSITION_EMBEDDINGS.to_string(),
            vec![cfg.max_position_embeddings as usize, h],
        ),
        (
            names::TOKEN_TYPE_EMBEDDINGS.to_string(),
            vec![cfg.type_vocab_size as usize, h],
        ),
        (names::EMBEDDINGS_LN_WEIGHT.to_string(), vec![h]),
        (names::EMBEDDINGS_LN_BIAS.to_string(), vec![h]),
    ];
    for layer in 0..cfg.num_layers as usize {
        for t in LayerTensor::ALL {
            let shape: Vec<usize> = t
                .shape(cfg, layer)
                .into_iter()
                .map(|d| d as usize)
                .collect();
            out.push((t.name(layer), shape));
        }
    }
    out.push((names::POOLER_WEIGHT.to_string(), vec![h, h]));
    out.push((names::POOLER_BIAS.to_string(), vec![h]));
    out
}

/// The safetensors header: names, dtypes, shapes and byte ranges, padded to 8 bytes.
fn header(list: &[(String, Vec<usize>)]) -> Result<Vec<u8>, String> {
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in list {
        let len = shape.iter().product::<usize>() * 4;
        map.insert(
            hf_name(name, "bert.", false),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut bytes = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

fn write_model(dir: &Path, cfg: &ModelConfig) -> Result<PathBuf, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let list = tensors(cfg);
    let head = header(&list)?;
    let path = dir.join("model.safetensors");
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(head.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&head))
        .map_err(|e| io(&path, e))?;
    let mut buf = Vec::new();
    for (name, shape) in &list {
        let n: usize = shape.iter().product();
        let mut rng = Rng::for_name(name);
        // LayerNorm gains near 1, small biases, weights about as wide as a trained BERT's.
        let (base, scale) = if name.ends_with("layer_norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.02)
        } else {
            (0.0, 0.08)
        };
        buf.clear();
        buf.extend((0..n).flat_map(|_| (base + scale * rng.symmetric(1.0)).to_le_bytes()));
        out.write_all(&buf).map_err(|e| io(&path, e))?;
    }
    out.flush().map_err(|e| io(&path, e))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, hf_config_json(cfg)).map_err(|e| io(&cfg_path, e))?;
    Ok(path)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: et-gen-bert-base DIR [--layers N]";
    let (dir, layers) = match args.as_slice() {
        [dir] => (dir, 12),
        [dir, flag, n] if flag == "--layers" => match n.parse::<u32>() {
            Ok(n) if n > 0 => (dir, n),
            _ => {
                eprintln!("et-gen-bert-base: --layers needs a positive number\n{usage}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match write_model(Path::new(dir), &bert_base(layers)) {
        Ok(p) => {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            println!("wrote {} ({:.1} MB)", p.display(), len as f64 / 1e6);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("et-gen-bert-base: {e}");
            ExitCode::from(1)
        }
    }
}
