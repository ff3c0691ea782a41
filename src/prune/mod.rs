//! Pruning dense weights into the encodings of the format.
//!
//! A [`Recipe`] says, for every linear weight of the encoder, which [`Method`] and which sparsity
//! (fraction of the weight removed) apply: one global target, overridden per role, per layer, and
//! per tensor, in that order of precedence. [`prune_matrix`] turns one dense matrix into an
//! [`EncodedTensor`]; [`select`] holds the ranking rules (which tiles, rows or heads survive).
//! Embeddings, LayerNorms and biases always stay dense.

pub mod calibrated;
pub mod recipe;
pub mod select;

pub use recipe::{Method, Recipe, RecipeError, Role, TensorPlan};

use crate::format::{Dtype, EncodedTensor, FormatError};

/// What pruning one matrix produced, for reports and the file's recipe.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PruneReport {
    /// Canonical tensor name.
    pub name: String,
    /// Method applied.
    pub method: Method,
    /// Encoding written (`dense`, `tile`, `tile+elements`, `rows`, `cols`).
    pub encoding: String,
    /// Tile shape when the encoding has one.
    pub tile: Option<[usize; 2]>,
    /// Requested sparsity (fraction removed).
    pub target_sparsity: f64,
    /// Fraction of elements kept (for `tile`: of grid tiles kept).
    pub density: f64,
    /// Bytes of the source tensor as f32.
    pub dense_bytes: u64,
    /// Bytes of the encoded parts.
    pub stored_bytes: u64,
}

/// A row-major dense matrix borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// `rows * cols` values.
    pub data: &'a [f32],
}

/// Prunes one linear weight as `plan` says and encodes it in `dtype`.
pub fn prune_matrix(
    name: &str,
    m: Matrix<'_>,
    plan: &TensorPlan,
    dtype: Dtype,
    // `Some((heads, head_dim))` when `m` is a value projection (attention-aware keeps V rows).
    value_heads: Option<(usize, usize)>,
) -> Result<(EncodedTensor, PruneReport), FormatError> {
    let keep_fraction = 1.0 - plan.sparsity;
    let (th, tw) = plan.tile;
    let tensor = match plan.method {
        Method::None | Method::Heads => {
            EncodedTensor::dense(vec![m.rows as u64, m.cols as u64], dtype, m.data)?
        }
        Method::Tile => {
            let keep = select::top_tiles(m, th, tw, keep_fraction);
            EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, &keep, dtype)?
        }
        Method::TileBalanced => {
            let keep = select::balanced_tiles(m, th, tw, keep_fraction);
            EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, &keep, dtype)?
        }
        Method::TileGrouped => {
            let keep = select::grouped_tiles(m, th, tw, keep_fraction);
            EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, &keep, dtype)?
        }
        Method::AttentionAware => match value_heads {
            // E.T.'s scheme for V: whole rows, the same number in every head, so each head's
            // attention output keeps a uniform width. Q, K, O and the FFN get tiles.
            Some((heads, head_dim)) => {
                let kept = select::rows_per_head(m, heads, head_dim, keep_fraction);
                EncodedTensor::rows(m.rows, m.cols, m.data, &kept, dtype)?
            }
            None => {
                let keep = select::top_tiles(m, th, tw, keep_fraction);
                EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, &keep, dtype)?
            }
        },
        Method::Rows => {
            let kept = select::top_rows(m, keep_fraction);
            EncodedTensor::rows(m.rows, m.cols, m.data, &kept, dtype)?
        }
        Method::Cols => {
            let kept = select::top_cols(m, keep_fraction);
            EncodedTensor::cols(m.rows, m.cols, m.data, &kept, dtype)?
        }
        Method::Irregular => {
            let keep = select::top_elements(m.data, keep_fraction);
            EncodedTensor::tile_elements(m.rows, m.cols, m.data, th, tw, &keep, dtype)?
        }
        Method::Existing => select::existing_zeros(m, th, tw, dtype)?,
    };
    let report = report_for(name, m, plan, &tensor);
    Ok((tensor, report))
}

/// Describes an encoded tensor next to its dense source.
pub fn report_for(name: &str, m: Matrix<'_>, plan: &TensorPlan, t: &EncodedTensor) -> PruneReport {
    use crate::format::{Encoding, PartRole};
    let part = |role: PartRole| {
        t.parts
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[])
    };
    let elements = (m.rows * m.cols).max(1) as f64;
    let (tile, density) = match t.encoding {
        Encoding::Tile {
            tile_rows,
            tile_cols,
            element_bitmaps,
            ..
        } => {
            let tiles = m.rows.div_ceil(tile_rows as usize) * m.cols.div_ceil(tile_cols as usize);
            let kept: u32 = part(PartRole::TileBitmap)
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])).count_ones())
                .sum();
            let density = if element_bitmaps {
                let stored = part(PartRole::Values).len() as f64 / t.dtype.size() as f64;
                stored / elements
            } else {
                f64::from(kept) / tiles.max(1) as f64
            };
            (Some([tile_rows as usize, tile_cols as usize]), density)
        }
        Encoding::Rows => (
            None,
            (part(PartRole::Indices).len() / 4) as f64 / m.rows.max(1) as f64,
        ),
        Encoding::Cols => (
            None,
            (part(PartRole::Indices).len() / 4) as f64 / m.cols.max(1) as f64,
        ),
        Encoding::Dense => (None, 1.0),
    };
    PruneReport {
        name: name.to_string(),
        method: plan.method,
        encoding: t.encoding.short_name().to_string(),
        tile,
        target_sparsity: plan.sparsity,
        density,
        dense_bytes: (m.rows * m.cols * 4) as u64,
        stored_bytes: t.payload_len(),
    }
}
