//! Linear layers computed on the stored encodings, never densifying a whole weight.
//!
//! - dense: virtual `DENSE_TH x DENSE_TW` blocks, decoded row segment by row segment;
//! - tile (with or without element bitmaps): only the kept tiles, decoded tile by tile;
//! - rows: a GEMM over the compacted kept rows, scattered into the output columns;
//! - cols: the kept input columns gathered from `X`, then a GEMM over the compacted matrix.
//!
//! Values of any stored dtype are converted to f32 as they are packed into a panel.

use crate::format::tiles::decode_into;
use crate::format::{Activation, Dtype, TensorData, TensorView, TileView};
use crate::runtime::RuntimeError;

use super::gemm::{gemm, gemm_packed, Epilogue, PackedX, PanelSource};
use super::ops::{activate, add_into};

/// Output features per virtual block of a dense weight.
const DENSE_TH: usize = 32;
/// Input features per virtual block of a dense weight.
const DENSE_TW: usize = 128;

/// A dense row-major `[n, k]` matrix in stored bytes.
struct DenseMatrix<'a> {
    n: usize,
    k: usize,
    dtype: Dtype,
    values: &'a [u8],
}

impl PanelSource for DenseMatrix<'_> {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn block_height(&self) -> usize {
        DENSE_TH
    }
    fn pack_block_row(
        &self,
        br: usize,
        scratch: &mut Vec<f32>,
        packed: &mut Vec<f32>,
        segs: &mut Vec<(usize, usize, usize)>,
    ) {
        let size = self.dtype.size() as usize;
        let th = DENSE_TH;
        packed.clear();
        segs.clear();
        let mut c0 = 0;
        while c0 < self.k {
            let w = DENSE_TW.min(self.k - c0);
            let off = packed.len();
            packed.resize(off + w * th, 0.0);
            let panel = &mut packed[off..];
            for i in 0..th {
                let r = br * th + i;
                if r >= self.n {
                    break;
                }
                let start = (r * self.k + c0) * size;
                if let Some(bytes) = self.values.get(start..start + w * size) {
                    let row = as_f32(self.dtype, bytes, scratch);
                    for (j, &v) in row.iter().enumerate() {
                        panel[j * th + i] = v;
                    }
                }
            }
            segs.push((c0, w, off));
            c0 += w;
        }
    }
}

/// The kept tiles of a tile-encoded weight.
struct TileMatrix<'a>(TileView<'a>);

impl PanelSource for TileMatrix<'_> {
    fn n(&self) -> usize {
        self.0.rows
    }
    fn k(&self) -> usize {
        self.0.cols
    }
    fn block_height(&self) -> usize {
        self.0.tile_rows
    }
    fn pack_block_row(
        &self,
        br: usize,
        scratch: &mut Vec<f32>,
        packed: &mut Vec<f32>,
        segs: &mut Vec<(usize, usize, usize)>,
    ) {
        let t = &self.0;
        let (th, tw) = (t.tile_rows, t.tile_cols);
        let area = th * tw;
        let size = t.dtype.size() as usize;
        packed.clear();
        segs.clear();
        for (k, bc) in t.row_tiles(br) {
            let c0 = bc * tw;
            let w = tw.min(t.cols.saturating_sub(c0));
            // Validation (EtsFile::open) proved the tile's values and bitmaps are in range.
            let tile: &[f32] = match (
                t.element_bitmaps,
                t.values.get(k * area * size..(k + 1) * area * size),
            ) {
                (None, Some(bytes)) => as_f32(t.dtype, bytes, scratch),
                _ => {
                    scratch.resize(area, 0.0);
                    t.tile_f32(k, scratch);
                    scratch
                }
            };
            let off = packed.len();
            packed.resize(off + w * th, 0.0);
            let panel = &mut packed[off..];
            for (i, row) in tile.chunks_exact(tw).enumerate() {
                for (j, &v) in row.iter().take(w).enumerate() {
                    panel[j * th + i] = v;
                }
            }
            segs.push((c0, w, off));
        }
    }
}

/// Stored values as f32: borrowed in place when they are aligned f32, else converted in bulk
/// into `scratch`.
fn as_f32<'s>(dtype: Dtype, bytes: &'s [u8], scratch: &'s mut Vec<f32>) -> &'s [f32] {
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) if cfg!(target_endian = "little") => return v,
            _ => {}
        },
        Dtype::F16 => {
            if let Ok(h) = bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
                use half::slice::HalfFloatSliceExt;
                scratch.resize(h.len(), 0.0);
                h.convert_to_f32_slice(scratch);
                return scratch;
            }
        }
        Dtype::Bf16 => {}
    }
    let n = bytes.len() / dtype.size() as usize;
    scratch.resize(n, 0.0);
    decode_into(dtype, bytes, scratch);
    scratch
}

enum Kind<'a> {
    Dense(DenseMatrix<'a>),
    Tile(TileMatrix<'a>),
    /// Compacted `[indices.len(), k]`; output column `indices[i]` comes from compact row `i`.
    Rows(&'a [u32], DenseMatrix<'a>),
    /// Compacted `[n, indices.len()]`; compact column `j` multiplies input column `indices[j]`.
    Cols(&'a [u32], DenseMatrix<'a>),
}

/// A linear layer `y = x W^T + b` over a stored weight `[n, k]`.
pub(crate) struct Linear<'a> {
    n: usize,
    k: usize,
    kind: Kind<'a>,
    bias: Option<Vec<f32>>,
}

impl<'a> Linear<'a> {
    /// Output features.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Wraps a stored 2-D weight of logical shape `[n, k]` and an optional bias of length `n`.
    pub(crate) fn new(
        view: TensorView<'a>,
        n: usize,
        k: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Linear<'a>, RuntimeError> {
        let expect = vec![n as u64, k as u64];
        if view.shape != expect.as_slice() {
            return Err(RuntimeError::BadShape {
                name: view.name.to_string(),
                expected: expect,
                actual: view.shape.to_vec(),
            });
        }
        let size = view.dtype.size() as usize;
        let bad_len = |what: &str| {
            RuntimeError::BadConfig(format!(
                "tensor `{}`: {what} has the wrong number of bytes",
                view.name
            ))
        };
        let dense = |rows: usize, cols: usize, values: &'a [u8]| DenseMatrix {
            n: rows,
            k: cols,
            dtype: view.dtype,
            values,
        };
        let kind = match view.data {
            TensorData::Dense { values } => {
                if values.len() != n * k * size {
                    return Err(bad_len("values"));
                }
                Kind::Dense(dense(n, k, values))
            }
            TensorData::Tile(t) => {
                if t.rows != n || t.cols != k {
                    return Err(bad_len("tile grid"));
                }
                Kind::Tile(TileMatrix(t))
            }
            TensorData::Rows { indices, values } => {
                if values.len() != indices.len() * k * size
                    || indices.iter().any(|&r| r as usize >= n)
                {
                    return Err(bad_len("rows"));
                }
                Kind::Rows(indices, dense(indices.len(), k, values))
            }
            TensorData::Cols { indices, values } => {
                if values.len() != n * indices.len() * size
                    || indices.iter().any(|&c| c as usize >= k)
                {
                    return Err(bad_len("cols"));
                }
                Kind::Cols(indices, dense(n, indices.len(), values))
            }
        };
        if let Some(b) = &bias {
            if b.len() != n {
                return Err(RuntimeError::BadShape {
                    name: format!("bias of `{}`", view.name),
                    expected: vec![n as u64],
                    actual: vec![b.len() as u64],
                });
            }
        }
        Ok(Linear { n, k, kind, bias })
    }

    /// `x` is `[m, k]` row-major; returns `[m, n]`.
    pub(crate) fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.forward_act(x, m, None)
    }

    /// [`Linear::forward`] followed by the activation `act`, fused into the output pass where
    /// the encoding allows.
    pub(crate) fn forward_act(&self, x: &[f32], m: usize, act: Option<Activation>) -> Vec<f32> {
        self.forward_with(x, None, m, act, None)
    }

    /// `act(x W^T + b) + residual`, with `xp` (when given) the same `x` packed beforehand so
    /// that several layers reading one input pack it once; `residual` is `[m, n]`.
    pub(crate) fn forward_with(
        &self,
        x: &[f32],
        xp: Option<&PackedX>,
        m: usize,
        act: Option<Activation>,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let bias = self.bias.as_deref();
        let residual = residual.filter(|r| r.len() == m * n);
        let epi = Epilogue {
            bias,
            act,
            residual,
        };
        let dense_like: Option<&dyn PanelSource> = match &self.kind {
            Kind::Dense(d) => Some(d),
            Kind::Tile(t) => Some(t),
            _ => None,
        };
        if let Some(src) = dense_like {
            return match xp.filter(|p| p.rows() == m) {
                Some(p) => gemm_packed(src, p, epi),
                None if x.len() >= m * k => gemm_packed(src, &PackedX::new(x, m, k), epi),
                None => vec![0f32; m * n],
            };
        }
        let mut y = match &self.kind {
            Kind::Rows(indices, d) => {
                let compact = gemm(d, x, m, None, None);
                let kept = indices.len();
                let mut y = vec![0f32; m * n];
                for (dst, src) in y.chunks_exact_mut(n).zip(compact.chunks_exact(kept.max(1))) {
                    for (&c, &v) in indices.iter().zip(src) {
                        dst[c as usize] = v;
                    }
                }
                if let Some(b) = bias {
                    for row in y.chunks_exact_mut(n) {
                        for (v, &bb) in row.iter_mut().zip(b) {
                            *v += bb;
                        }
                    }
                }
                if let Some(act) = act {
                    activate(&mut y, act);
                }
                y
            }
            Kind::Cols(indices, d) => {
                let kept = indices.len();
                let mut xc = vec![0f32; m * kept];
                for (dst, src) in xc.chunks_exact_mut(kept.max(1)).zip(x.chunks_exact(k)) {
                    for (d, &c) in dst.iter_mut().zip(indices.iter()) {
                        *d = src[c as usize];
                    }
                }
                gemm(d, &xc, m, bias, act)
            }
            Kind::Dense(_) | Kind::Tile(_) => vec![0f32; m * n],
        };
        if let Some(r) = residual {
            add_into(&mut y, r);
        }
        y
    }
}

/// Row `r` of a stored 2-D tensor (an embedding table) as f32, whatever its encoding.
pub(crate) fn tensor_row(view: &TensorView<'_>, r: usize, out: &mut [f32]) {
    let (_, cols) = view.matrix_dims();
    let size = view.dtype.size() as usize;
    out.fill(0.0);
    let len = cols.min(out.len());
    let out = &mut out[..len];
    match view.data {
        TensorData::Dense { values } => {
            if let Some(bytes) = values.get(r * cols * size..(r + 1) * cols * size) {
                decode_into(view.dtype, bytes, out);
            }
        }
        TensorData::Tile(t) => {
            let (th, tw) = (t.tile_rows, t.tile_cols);
            let mut tile = vec![0f32; th * tw];
            let (br, i) = (r / th, r % th);
            for (k, bc) in t.row_tiles(br) {
                t.tile_f32(k, &mut tile);
                for (j, &v) in tile[i * tw..(i + 1) * tw].iter().enumerate() {
                    if let Some(o) = out.get_mut(bc * tw + j) {
                        *o = v;
                    }
                }
            }
        }
        TensorData::Rows { indices, values } => {
            if let Ok(pos) = indices.binary_search(&(r as u32)) {
                if let Some(bytes) = values.get(pos * cols * size..(pos + 1) * cols * size) {
                    decode_into(view.dtype, bytes, out);
                }
            }
        }
        TensorData::Cols { indices, values } => {
            let kept = indices.len();
            if let Some(bytes) = values.get(r * kept * size..(r + 1) * kept * size) {
                let mut row = vec![0f32; kept];
                decode_into(view.dtype, bytes, &mut row);
                for (&c, &v) in indices.iter().zip(&row) {
                    if let Some(o) = out.get_mut(c as usize) {
                        *o = v;
                    }
                }
            }
        }
    }
}
