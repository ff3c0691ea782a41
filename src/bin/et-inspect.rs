//! Prints what a `.ets` file holds: the model configuration, the pruning recipe, provenance, and
//! per tensor its shape, dtype, encoding, tile shape, density and size, with totals.
//! `--json` prints the same as one JSON object. Exit status 1 (with `FILE: CODE: MESSAGE` on
//! stderr) when the file does not open; checksums are not verified (use `et-verify`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ets::format::{Encoding, EtsFile, TensorData, TensorView, TileView};
use serde_json::{json, Value};

/// `writeln!` into a String (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

/// Summarise an .ets file.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The file to inspect.
    file: PathBuf,
}

/// What the table and the JSON report about one tensor.
struct Row {
    name: String,
    shape: Vec<u64>,
    dtype: &'static str,
    encoding: &'static str,
    tile: Option<(usize, usize)>,
    tiles: Option<(usize, usize)>,
    stored_values: u64,
    kept_elements: u64,
    numel: u64,
    bytes: u64,
}

/// Elements of kept tiles that lie inside the matrix (edge tiles are zero-padded).
fn tile_elements_inside(v: &TileView<'_>) -> u64 {
    let mut n = 0u64;
    for br in 0..v.grid_rows {
        let h = v.tile_rows.min(v.rows - br * v.tile_rows);
        for (_, bc) in v.row_tiles(br) {
            n += (h * v.tile_cols.min(v.cols - bc * v.tile_cols)) as u64;
        }
    }
    n
}

impl Row {
    fn of(t: &TensorView<'_>) -> Row {
        let size = t.dtype.size();
        let values_len = match t.data {
            TensorData::Dense { values }
            | TensorData::Rows { values, .. }
            | TensorData::Cols { values, .. } => values.len(),
            TensorData::Tile(v) => v.values.len(),
        } as u64;
        let mut kept = values_len / size;
        let (tile, tiles) = match (t.encoding, t.data) {
            (
                Encoding::Tile {
                    element_bitmaps, ..
                },
                TensorData::Tile(v),
            ) => {
                if !element_bitmaps {
                    kept = tile_elements_inside(&v);
                }
                (
                    Some((v.tile_rows, v.tile_cols)),
                    Some((v.kept_tiles(), v.grid_rows * v.grid_cols)),
                )
            }
            _ => (None, None),
        };
        Row {
            name: t.name.to_string(),
            shape: t.shape.to_vec(),
            dtype: t.dtype.name(),
            encoding: t.encoding.short_name(),
            tile,
            tiles,
            stored_values: values_len / size,
            kept_elements: kept,
            numel: t.shape.iter().product(),
            bytes: t.length,
        }
    }

    /// Kept elements (stored and inside the matrix) over logical elements.
    fn density(&self) -> f64 {
        self.kept_elements as f64 / self.numel.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "shape": self.shape,
            "dtype": self.dtype,
            "encoding": self.encoding,
            "tile": self.tile.map(|(h, w)| [h, w]),
            "kept_tiles": self.tiles.map(|t| t.0),
            "grid_tiles": self.tiles.map(|t| t.1),
            "stored_values": self.stored_values,
            "kept_elements": self.kept_elements,
            "elements": self.numel,
            "density": self.density(),
            "bytes": self.bytes,
        })
    }
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn render_text(args: &Args, f: &EtsFile, rows: &[Row]) -> String {
    let mut out = String::new();
    let m = f.model();
    let activation = serde_json::to_value(m.activation).unwrap_or_default();
    let activation = activation.as_str().unwrap_or("?");
    w!(
        out,
        "file: {} ({} bytes, format 1.{})",
        args.file.display(),
        f.bytes().len(),
        f.minor_version()
    );
    w!(out,
        "model: {}, {} layers, hidden {}, {} heads x {} (kept per layer {:?}), ffn {}, activation {}",
        m.architecture, m.num_layers, m.hidden_size, m.num_heads, m.head_dim, m.heads_per_layer,
        m.intermediate_size, activation
    );
    w!(
        out,
        "       vocab {}, max positions {}, token types {}, layer_norm_eps {:e}, labels {}",
        m.vocab_size,
        m.max_position_embeddings,
        m.type_vocab_size,
        m.layer_norm_eps,
        m.num_labels.map_or("none".to_string(), |n| n.to_string())
    );
    if let Some(e) = &f.header().embedding {
        let show = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        w!(
            out,
            "embedding: pooling {}, normalize {}, max length {}",
            show(e.pooling.clone()),
            show(e.normalize.map(|b| b.to_string())),
            show(e.max_length.map(|n| n.to_string()))
        );
    }
    w!(out, "recipe: {}", f.header().recipe);
    let p = &f.header().provenance;
    w!(
        out,
        "provenance: {} (sha256 {}), written by {}",
        p.source_name,
        p.source_sha256,
        p.converter
    );
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    w!(
        out,
        "\n{:width$}  {:>14}  {:5}  {:13}  {:7}  {:>11}  {:>7}  {:>10}",
        "name",
        "shape",
        "dtype",
        "encoding",
        "tile",
        "tiles",
        "density",
        "bytes"
    );
    for r in rows {
        let tile = r.tile.map_or("-".to_string(), |(h, w)| format!("{h}x{w}"));
        let tiles = r.tiles.map_or("-".to_string(), |(k, n)| format!("{k}/{n}"));
        w!(
            out,
            "{:width$}  {:>14}  {:5}  {:13}  {:7}  {:>11}  {:>7.3}  {:>10}",
            r.name,
            shape_text(&r.shape),
            r.dtype,
            r.encoding,
            tile,
            tiles,
            r.density(),
            r.bytes
        );
    }
    let others: Vec<_> = f
        .header()
        .sections
        .iter()
        .filter(|s| s.kind != "tensor")
        .collect();
    if !others.is_empty() {
        w!(out, "\nother sections:");
        for s in others {
            let format = s.format.as_deref().unwrap_or("-");
            let required = if s.required { "required" } else { "optional" };
            w!(
                out,
                "  {}  kind {}  format {format}  {required}  {} bytes",
                s.name,
                s.kind,
                s.length
            );
        }
    }
    let t = totals(f, rows);
    w!(out,
        "\ntotals: {} tensors, {} of {} elements kept (density {:.3}), {} values stored, {} tensor bytes, {} file bytes",
        t["tensors"], t["kept_elements"], t["elements"], t["density"].as_f64().unwrap_or(0.0),
        t["stored_values"], t["tensor_bytes"], t["file_bytes"]
    );
    out
}

fn totals(f: &EtsFile, rows: &[Row]) -> Value {
    let stored: u64 = rows.iter().map(|r| r.stored_values).sum();
    let kept: u64 = rows.iter().map(|r| r.kept_elements).sum();
    let elements: u64 = rows.iter().map(|r| r.numel).sum();
    json!({
        "tensors": rows.len(),
        "stored_values": stored,
        "elements": elements,
        "kept_elements": kept,
        "density": kept as f64 / elements.max(1) as f64,
        "tensor_bytes": rows.iter().map(|r| r.bytes).sum::<u64>(),
        "file_bytes": f.bytes().len(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let f = match EtsFile::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            let message = e.to_string().replace('\n', " ");
            let _ = writeln!(
                std::io::stderr(),
                "{}: {}: {message}",
                args.file.display(),
                e.code()
            );
            return ExitCode::from(1);
        }
    };
    let rows: Vec<Row> = f.tensors().map(|t| Row::of(&t)).collect();
    let text = if args.json {
        let h = f.header();
        let sections: Vec<Value> = h
            .sections
            .iter()
            .filter(|s| s.kind != "tensor")
            .map(|s| json!({"name": s.name, "kind": s.kind, "format": s.format, "required": s.required, "bytes": s.length}))
            .collect();
        let v = json!({
            "file": args.file.display().to_string(),
            "bytes": f.bytes().len(),
            "version": format!("1.{}", f.minor_version()),
            "alignment": h.alignment,
            "model": h.model,
            "recipe": h.recipe,
            "provenance": h.provenance,
            "tensors": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "other_sections": sections,
            "totals": totals(&f, &rows),
        });
        format!("{v:#}\n")
    } else {
        render_text(&args, &f, &rows)
    };
    // A closed pipe (`et-inspect FILE | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
