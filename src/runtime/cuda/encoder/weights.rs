//! The model's tensors on the device, as the forward pass reads them.
//!
//! The file's tensor bytes are uploaded once as one allocation ([`DeviceModel`]): tile weights are
//! read in place by the tile kernels (plus their small plans), dense, kept-rows and kept-columns
//! weights by cuBLAS, biases and LayerNorm parameters as f32. Every projection runs through the
//! [`Dispatcher`](crate::runtime::cuda::Dispatcher), which picks the tile kernel or cuBLAS by
//! measured speed at the batch's token count. The only copies made here are for what the f16
//! kernels cannot read as stored: bf16 weights and tables (the activations are f16), converted to
//! dense f16 once. Shapes are checked against the model configuration before anything runs.

use half::f16;

use crate::format::names::{self, LayerTensor};
use crate::format::{Activation, EtsFile, ModelConfig, TensorView};
use crate::runtime::cuda::device::{addr, RawPtr};
use crate::runtime::cuda::{
    CudaError, CudaRuntime, CudaSlice, DeviceModel, ElemType, LinearWeight,
};
use crate::runtime::RuntimeError;

/// One projection `[n, k]` of the model with its optional bias.
pub(crate) struct Proj {
    /// The weight tensor's name (the dispatcher's key).
    pub name: String,
    pub n: usize,
    pub k: usize,
    /// The weight as the linear layer reads it.
    pub weight: LinearWeight,
    /// The bias tensor's name (its `n` f32 values are [`DeviceModel::f32_values`]).
    pub bias: String,
    /// Owns the f16 copy `weight` points into when the stored weight is not f16.
    _converted: Option<CudaSlice<u16>>,
}

/// A LayerNorm's f32 parameters (device addresses inside the model).
#[derive(Clone, Copy)]
pub(crate) struct DevLayerNorm {
    pub gamma: u64,
    pub beta: u64,
}

/// One encoder layer on the device.
pub(crate) struct DevLayer {
    /// Kept heads (0 when every head was pruned: then `qkv` and `out` are absent).
    pub heads: usize,
    /// Q, K and V projections.
    pub qkv: Option<[Proj; 3]>,
    /// When Q, K and V are all dense f16 of one shape: their addresses, for one batched GEMM.
    pub qkv_dense: Option<[u64; 3]>,
    /// Whether Q, K and V may run as one batched GEMM when the dispatcher sends each tile weight
    /// among them to cuBLAS ([`qkv_batchable`]); true for `qkv_dense` layers too.
    pub qkv_batchable: bool,
    pub out: Option<Proj>,
    /// The attention output bias (for layers without heads).
    pub out_bias: u64,
    pub ln1: DevLayerNorm,
    pub intermediate: Proj,
    pub ffn_out: Proj,
    pub ln2: DevLayerNorm,
}

/// Every tensor of the model on the device.
pub(crate) struct DevWeights {
    /// The embedding tables as f16 `[rows, hidden]` (word, position, token type).
    pub tables: [u64; 3],
    pub embeddings_ln: DevLayerNorm,
    pub layers: Vec<DevLayer>,
    pub pooler: Option<Proj>,
    pub classifier: Option<Proj>,
    /// Widest intermediate (FFN) size over the layers.
    pub max_intermediate: usize,
    /// Widest attention width (heads x head_dim) over the layers.
    pub max_width: usize,
    /// Bytes of f16 copies made for bf16 weights.
    pub converted_bytes: usize,
    /// Owns the f16 copies of bf16 tables.
    _tables_owned: Vec<CudaSlice<u16>>,
    /// The file's tensors (every address above points into it or into a copy owned here).
    pub model: DeviceModel,
}

fn get<'f>(file: &'f EtsFile, name: &str) -> Result<TensorView<'f>, RuntimeError> {
    crate::runtime::model_tensor(file, name)
}

fn check_shape(v: &TensorView<'_>, expected: &[usize]) -> Result<(), RuntimeError> {
    let expected: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    if v.shape != expected.as_slice() {
        return Err(RuntimeError::BadShape {
            name: v.name.to_string(),
            expected,
            actual: v.shape.to_vec(),
        });
    }
    Ok(())
}

fn to_f16_bits(values: &[f32]) -> Vec<u16> {
    values.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
}

/// The f32 values of 1-D tensor `name` of `len` values, shape checked.
fn vector(
    model: &DeviceModel,
    file: &EtsFile,
    name: &str,
    len: usize,
) -> Result<u64, RuntimeError> {
    check_shape(&get(file, name)?, &[len])?;
    Ok(addr(&model.f32_values(name)?))
}

/// A `[rows, cols]` weight as the linear layer reads it: in place when stored as f16, else an
/// f16 dense copy (returned with it).
fn weight(
    rt: &CudaRuntime,
    model: &DeviceModel,
    file: &EtsFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<(LinearWeight, Option<CudaSlice<u16>>), RuntimeError> {
    let v = get(file, name)?;
    check_shape(&v, &[rows, cols])?;
    let w = model.linear(name)?;
    if w.elem() == ElemType::F16 {
        return Ok((w, None));
    }
    let copy = rt.upload(&to_f16_bits(&v.to_dense_f32()))?;
    let dense = LinearWeight::Dense {
        w: copy.ptr(),
        n: rows,
        k: cols,
        elem: ElemType::F16,
    };
    Ok((dense, Some(copy)))
}

fn proj(
    rt: &CudaRuntime,
    model: &DeviceModel,
    file: &EtsFile,
    (w, b): (&str, &str),
    n: usize,
    k: usize,
) -> Result<Proj, RuntimeError> {
    let (weight, converted) = weight(rt, model, file, w, n, k)?;
    Ok(Proj {
        name: w.to_string(),
        n,
        k,
        weight,
        bias: {
            vector(model, file, b, n)?;
            b.to_string()
        },
        _converted: converted,
    })
}

/// An embedding table `[rows, h]` as dense f16: the file's bytes when stored so, else a copy.
fn table(
    rt: &CudaRuntime,
    model: &DeviceModel,
    file: &EtsFile,
    name: &str,
    rows: usize,
    h: usize,
    owned: &mut Vec<CudaSlice<u16>>,
) -> Result<u64, RuntimeError> {
    match weight(rt, model, file, name, rows, h)? {
        (LinearWeight::Dense { w, .. }, copy) => {
            owned.extend(copy);
            Ok(w)
        }
        _ => {
            let v = get(file, name)?;
            let copy = rt.upload(&to_f16_bits(&v.to_dense_f32()))?;
            let p = copy.ptr();
            owned.push(copy);
            Ok(p)
        }
    }
}

fn layer_norm(
    model: &DeviceModel,
    file: &EtsFile,
    w: &str,
    b: &str,
    h: usize,
) -> Result<DevLayerNorm, RuntimeError> {
    Ok(DevLayerNorm {
        gamma: vector(model, file, w, h)?,
        beta: vector(model, file, b, h)?,
    })
}

/// The activation code the kernels take (see `kernels/encoder.cu`).
pub(crate) fn activation_code(a: Activation) -> i32 {
    match a {
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

/// Whether three projections can run as one batched f16 GEMM once each has a dense matrix: one
/// shape, f16, each stored dense or as tiles without element bitmaps (a tile weight the
/// dispatcher sends to cuBLAS runs on its dense copy). Kept rows or columns never qualify: their
/// products have other shapes.
pub(crate) fn qkv_batchable(ws: [&LinearWeight; 3]) -> bool {
    let dims = ws[0].dims();
    ws.iter().all(|w| {
        w.dims() == dims
            && w.elem() == ElemType::F16
            && match w {
                LinearWeight::Dense { .. } => true,
                LinearWeight::Tile(v) => !v.has_element_bitmaps,
                LinearWeight::Rows { .. } | LinearWeight::Cols { .. } => false,
            }
    })
}

/// Checks the configuration the kernels rely on.
pub(crate) fn check_config(c: &ModelConfig) -> Result<(), RuntimeError> {
    if c.heads_per_layer.len() != c.num_layers as usize {
        return Err(RuntimeError::BadConfig(format!(
            "heads_per_layer has {} entries for {} layers",
            c.heads_per_layer.len(),
            c.num_layers
        )));
    }
    if c.hidden_size == 0 || c.head_dim == 0 {
        return Err(RuntimeError::BadConfig(
            "hidden_size and head_dim must be positive".to_string(),
        ));
    }
    if !matches!(c.head_dim, 32 | 64 | 128) && c.heads_per_layer.iter().any(|&h| h > 0) {
        return Err(RuntimeError::Cuda(CudaError::Invalid(format!(
            "the CUDA attention kernel supports head_dim 32, 64 or 128, not {}",
            c.head_dim
        ))));
    }
    if c.hidden_size % 8 != 0 {
        return Err(RuntimeError::Cuda(CudaError::Invalid(format!(
            "the CUDA encoder needs hidden_size to be a multiple of 8, not {}",
            c.hidden_size
        ))));
    }
    Ok(())
}

fn load_layer(
    rt: &CudaRuntime,
    model: &DeviceModel,
    file: &EtsFile,
    c: &ModelConfig,
    i: usize,
) -> Result<DevLayer, RuntimeError> {
    let h = c.hidden_size as usize;
    let heads = c.heads_per_layer.get(i).copied().unwrap_or(0) as usize;
    let width = heads * c.head_dim as usize;
    let name = |t: LayerTensor| t.name(i);
    let pair = |w: LayerTensor, b: LayerTensor| (name(w), name(b));
    let p = |(w, b): (String, String), n: usize, k: usize| proj(rt, model, file, (&w, &b), n, k);
    let out_bias = vector(model, file, &name(LayerTensor::OutputBias), h)?;
    let (qkv, out) = if heads == 0 {
        (None, None)
    } else {
        let q = p(
            pair(LayerTensor::QueryWeight, LayerTensor::QueryBias),
            width,
            h,
        )?;
        let k = p(pair(LayerTensor::KeyWeight, LayerTensor::KeyBias), width, h)?;
        let v = p(
            pair(LayerTensor::ValueWeight, LayerTensor::ValueBias),
            width,
            h,
        )?;
        let out = p(
            pair(LayerTensor::OutputWeight, LayerTensor::OutputBias),
            h,
            width,
        )?;
        (Some([q, k, v]), Some(out))
    };
    let inter = crate::runtime::ffn_width(file, c, i)?;
    let ln = |w: LayerTensor, b: LayerTensor| layer_norm(model, file, &name(w), &name(b), h);
    let dense = |p: &Proj| match p.weight {
        LinearWeight::Dense {
            w,
            elem: ElemType::F16,
            ..
        } => Some(w),
        _ => None,
    };
    let qkv_dense = match &qkv {
        Some([q, k, v]) => match (dense(q), dense(k), dense(v)) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        },
        None => None,
    };
    let qkv_batchable = match &qkv {
        Some([q, k, v]) => qkv_batchable([&q.weight, &k.weight, &v.weight]),
        None => false,
    };
    Ok(DevLayer {
        heads,
        qkv,
        qkv_dense,
        qkv_batchable,
        out,
        out_bias,
        ln1: ln(LayerTensor::AttentionLnWeight, LayerTensor::AttentionLnBias)?,
        intermediate: p(
            pair(
                LayerTensor::IntermediateWeight,
                LayerTensor::IntermediateBias,
            ),
            inter,
            h,
        )?,
        ffn_out: p(
            pair(LayerTensor::FfnOutputWeight, LayerTensor::FfnOutputBias),
            h,
            inter,
        )?,
        ln2: ln(LayerTensor::FfnLnWeight, LayerTensor::FfnLnBias)?,
    })
}

/// The pooler and classifier, when the file has them.
fn heads(
    rt: &CudaRuntime,
    model: &DeviceModel,
    file: &EtsFile,
    c: &ModelConfig,
) -> Result<(Option<Proj>, Option<Proj>), RuntimeError> {
    let h = c.hidden_size as usize;
    let pooler = if file.has_tensor(names::POOLER_WEIGHT) {
        let names = (names::POOLER_WEIGHT, names::POOLER_BIAS);
        Some(proj(rt, model, file, names, h, h)?)
    } else {
        None
    };
    let classifier = if file.has_tensor(names::CLASSIFIER_WEIGHT) {
        let labels = match c.num_labels {
            Some(l) => l as usize,
            None => get(file, names::CLASSIFIER_WEIGHT)?
                .shape
                .first()
                .copied()
                .unwrap_or(0) as usize,
        };
        let names = (names::CLASSIFIER_WEIGHT, names::CLASSIFIER_BIAS);
        Some(proj(rt, model, file, names, labels, h)?)
    } else {
        None
    };
    Ok((pooler, classifier))
}

/// Checks and uploads every tensor the forward pass needs.
pub(crate) fn upload(rt: &CudaRuntime, file: &EtsFile) -> Result<DevWeights, RuntimeError> {
    let c = file.model();
    check_config(c)?;
    let model = DeviceModel::upload(rt, file)?;
    let h = c.hidden_size as usize;
    let mut owned = Vec::new();
    let rows = [
        (names::WORD_EMBEDDINGS, c.vocab_size),
        (names::POSITION_EMBEDDINGS, c.max_position_embeddings),
        (names::TOKEN_TYPE_EMBEDDINGS, c.type_vocab_size),
    ];
    let mut tables = [0u64; 3];
    for (slot, (name, r)) in tables.iter_mut().zip(rows) {
        *slot = table(rt, &model, file, name, r as usize, h, &mut owned)?;
    }
    let embeddings_ln = layer_norm(
        &model,
        file,
        names::EMBEDDINGS_LN_WEIGHT,
        names::EMBEDDINGS_LN_BIAS,
        h,
    )?;
    let layers = (0..c.num_layers as usize)
        .map(|i| load_layer(rt, &model, file, c, i))
        .collect::<Result<Vec<_>, _>>()?;
    let (pooler, classifier) = heads(rt, &model, file, c)?;
    let max_intermediate = layers.iter().map(|l| l.intermediate.n).max().unwrap_or(0);
    let max_width = layers
        .iter()
        .map(|l| l.heads * c.head_dim as usize)
        .max()
        .unwrap_or(0);
    let mut converted_bytes: usize = owned.iter().map(|b| b.len()).sum();
    for p in all_projections(&layers, &pooler, &classifier) {
        converted_bytes += p._converted.as_ref().map_or(0, |b| b.len());
    }
    Ok(DevWeights {
        tables,
        embeddings_ln,
        layers,
        pooler,
        classifier,
        max_intermediate,
        max_width,
        converted_bytes,
        _tables_owned: owned,
        model,
    })
}

/// Every projection of the model, in forward order.
pub(crate) fn all_projections<'a>(
    layers: &'a [DevLayer],
    pooler: &'a Option<Proj>,
    classifier: &'a Option<Proj>,
) -> impl Iterator<Item = &'a Proj> {
    layers
        .iter()
        .flat_map(|l| {
            l.qkv
                .iter()
                .flatten()
                .chain(l.out.iter())
                .chain([&l.intermediate, &l.ffn_out])
        })
        .chain(pooler.iter())
        .chain(classifier.iter())
}

impl DevWeights {
    /// Every projection of the model, in forward order.
    pub fn projections(&self) -> impl Iterator<Item = &Proj> {
        all_projections(&self.layers, &self.pooler, &self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::qkv_batchable;
    use crate::runtime::cuda::{ElemType, LinearWeight, TileDeviceView, TileShape};

    fn dense(n: usize, k: usize, elem: ElemType) -> LinearWeight {
        LinearWeight::Dense { w: 0, n, k, elem }
    }

    fn tile(n: usize, k: usize, elem: ElemType, bitmaps: bool) -> LinearWeight {
        let mut shape = TileShape::new(n, k, 32, 32, 10, elem);
        shape.has_element_bitmaps = bitmaps;
        LinearWeight::Tile(TileDeviceView {
            shape,
            bitmap: 0,
            row_offsets: 0,
            values: 0,
            rs_plans: 0,
            rs_plan_stride: 0,
            sk_plan: 0,
            sk_units: 0,
        })
    }

    #[test]
    fn only_same_shape_f16_dense_or_tile_projections_batch() {
        let f16 = ElemType::F16;
        let (d, t) = (dense(768, 768, f16), tile(768, 768, f16, false));
        assert!(qkv_batchable([&d, &d, &d]));
        assert!(qkv_batchable([&t, &t, &t]));
        assert!(qkv_batchable([&t, &d, &t]), "dense and tile weights mix");
        let rows = LinearWeight::Rows {
            w: 0,
            inv: 0,
            n: 768,
            nr: 384,
            k: 768,
            elem: f16,
        };
        assert!(!qkv_batchable([&t, &t, &rows]), "kept rows");
        let cols = LinearWeight::Cols {
            w: 0,
            idx: 0,
            n: 768,
            kc: 384,
            k: 768,
            elem: f16,
        };
        assert!(!qkv_batchable([&cols, &t, &t]), "kept columns");
        assert!(!qkv_batchable([
            &t,
            &tile(768, 768, ElemType::Bf16, false),
            &t
        ]));
        assert!(!qkv_batchable([&t, &tile(768, 768, f16, true), &t]));
        assert!(!qkv_batchable([&d, &dense(384, 768, f16), &d]), "shapes");
        assert!(!qkv_batchable([&t, &t, &tile(768, 512, f16, false)]));
    }
}
