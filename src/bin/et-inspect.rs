//! Prints what a `.ets` file holds: the model configuration, the pruning recipe, provenance, and
//! per tensor its shape, dtype, encoding, tile shape, density and size, with totals.
//! `--json` prints the same as one JSON object. `--tile-map FILE.svg` also draws which tiles each
//! linear weight kept: one panel per weight, layers in rows, roles in columns. Exit status 1
//! (with `FILE: CODE: MESSAGE` on stderr) when the file does not open or the map cannot be
//! written; checksums are not verified (use `et-verify`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ets::format::{Encoding, EtsFile, TensorData, TensorView, TileView};
use ets::prune::Role;
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
    /// Also write an SVG map of the kept tiles of every linear weight to this file.
    #[arg(long, value_name = "FILE.svg")]
    tile_map: Option<PathBuf>,
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
    w!(out, "recipe: {}", recipe_summary(&f.header().recipe));
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

/// Pixels per matrix element in the tile map.
const MAP_SCALE: f64 = 0.2;
/// Space around and between panels, in pixels.
const MAP_GAP: f64 = 24.0;

/// One panel of the tile map: the matrix outline, then one rectangle per run of kept tiles (or
/// kept rows or columns) along each block row, `data-tiles` counting the tiles of a run.
fn map_panel(out: &mut String, t: &TensorView<'_>, x0: f64, y0: f64) {
    let (rows, cols) = t.matrix_dims();
    let (h, w) = (rows as f64 * MAP_SCALE, cols as f64 * MAP_SCALE);
    let kept = "#1f4e79";
    let _ = write!(
        out,
        "<g class=\"panel\" data-name=\"{}\"><title>{}</title>\
         <rect x=\"{x0:.2}\" y=\"{y0:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" fill=\"#e8e8e8\"/>",
        t.name, t.name
    );
    let rect = |out: &mut String, x: f64, y: f64, rw: f64, rh: f64, n: usize| {
        let _ = write!(
            out,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{rw:.2}\" height=\"{rh:.2}\" fill=\"{kept}\" data-tiles=\"{n}\"/>",
            x0 + x,
            y0 + y
        );
    };
    match t.data {
        TensorData::Tile(v) => {
            for br in 0..v.grid_rows {
                let y = (br * v.tile_rows) as f64 * MAP_SCALE;
                let th = (v.tile_rows.min(v.rows - br * v.tile_rows)) as f64 * MAP_SCALE;
                let cols: Vec<usize> = v.row_tiles(br).map(|(_, bc)| bc).collect();
                let mut i = 0;
                while i < cols.len() {
                    let mut j = i + 1;
                    while j < cols.len() && cols[j] == cols[j - 1] + 1 {
                        j += 1;
                    }
                    let c0 = cols[i] * v.tile_cols;
                    let c1 = ((cols[j - 1] + 1) * v.tile_cols).min(v.cols);
                    let x = c0 as f64 * MAP_SCALE;
                    rect(out, x, y, (c1 - c0) as f64 * MAP_SCALE, th, j - i);
                    i = j;
                }
            }
        }
        TensorData::Rows { indices, .. } => {
            for &r in indices {
                rect(out, 0.0, f64::from(r) * MAP_SCALE, w, MAP_SCALE, 1);
            }
        }
        TensorData::Cols { indices, .. } => {
            for &c in indices {
                rect(out, f64::from(c) * MAP_SCALE, 0.0, MAP_SCALE, h, 1);
            }
        }
        TensorData::Dense { .. } => rect(out, 0.0, 0.0, w, h, 1),
    }
    out.push_str("</g>");
}

/// The SVG tile map: one row of panels per layer, one column per role.
fn tile_map(f: &EtsFile) -> String {
    let mut cells: Vec<(usize, usize, TensorView<'_>)> = f
        .tensors()
        .filter_map(|t| {
            let (layer, role) = Role::of_name(t.name)?;
            let col = Role::ALL.iter().position(|&r| r == role)?;
            (t.shape.len() == 2).then_some((layer, col, t))
        })
        .collect();
    cells.sort_by_key(|&(l, c, _)| (l, c));
    let layers = cells.last().map_or(0, |c| c.0 + 1);
    let mut col_w = [0f64; 6];
    let mut row_h = vec![0f64; layers];
    for (l, c, t) in &cells {
        let (r, k) = t.matrix_dims();
        col_w[*c] = col_w[*c].max(k as f64 * MAP_SCALE);
        row_h[*l] = row_h[*l].max(r as f64 * MAP_SCALE);
    }
    let label_w = 70.0;
    let head_h = 30.0;
    let x_at = |c: usize| label_w + col_w[..c].iter().map(|w| w + MAP_GAP).sum::<f64>();
    let y_at = |l: usize| head_h + row_h[..l].iter().map(|h| h + MAP_GAP).sum::<f64>();
    let width = x_at(6);
    let height = y_at(layers) + MAP_GAP;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (c, role) in Role::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"18\">{}</text>",
            x_at(c),
            role.name()
        );
    }
    for l in 0..layers {
        let _ = writeln!(
            out,
            "<text x=\"8\" y=\"{:.1}\">layer {l}</text>",
            y_at(l) + 12.0
        );
    }
    for (l, c, t) in &cells {
        map_panel(&mut out, t, x_at(*c), y_at(*l));
        out.push('\n');
    }
    out.push_str("</svg>\n");
    out
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
    if let Some(path) = &args.tile_map {
        if let Err(e) = std::fs::write(path, tile_map(&f)) {
            let _ = writeln!(std::io::stderr(), "{}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
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

/// The recipe as compact JSON with every object or array of more than eight entries (per-weight
/// results, calibration cosines) replaced by its size; `--json` prints it whole.
fn recipe_summary(recipe: &Value) -> String {
    fn shrink(v: &Value) -> Value {
        const KEEP: usize = 8;
        match v {
            Value::Object(m) if m.len() > KEEP => {
                Value::String(format!("<{} entries; --json shows them>", m.len()))
            }
            Value::Array(a) if a.len() > KEEP => {
                Value::String(format!("<{} items; --json shows them>", a.len()))
            }
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, x)| (k.clone(), shrink(x))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(shrink).collect()),
            other => other.clone(),
        }
    }
    shrink(recipe).to_string()
}
