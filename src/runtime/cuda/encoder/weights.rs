//! Reading a validated `.ets` file's tensors, checking their shapes against the model
//! configuration, and uploading them to the device once.
//!
//! Every projection weight is uploaded as a dense row-major f16 `[n, k]` matrix, whatever its
//! stored encoding (dense, tile, tile with element bitmaps, rows, cols) or dtype: this is the
//! fallback path, run by cuBLAS. Pruned heads need no densifying: their rows and columns are
//! absent from the file and the layer simply has fewer heads. Q, K and V are concatenated into one
//! `[3 W, hidden]` matrix so that one GEMM projects all three.

use half::f16;

use crate::format::names::{self, LayerTensor};
use crate::format::{Activation, EtsFile, ModelConfig, TensorView};
use crate::runtime::cuda::{CudaError, CudaRuntime, CudaSlice};
use crate::runtime::RuntimeError;

/// A dense f16 weight `[n, k]` on the device, with its optional f32 bias `[n]`.
pub(crate) struct DevLinear {
    pub n: usize,
    pub k: usize,
    pub weight: CudaSlice<u16>,
    pub bias: Option<CudaSlice<f32>>,
}

/// A LayerNorm's f32 parameters on the device.
pub(crate) struct DevLayerNorm {
    pub gamma: CudaSlice<f32>,
    pub beta: CudaSlice<f32>,
}

/// One encoder layer on the device.
pub(crate) struct DevLayer {
    /// Kept heads (0 when every head was pruned: then `qkv` and `out` are absent).
    pub heads: usize,
    /// `[Wq; Wk; Wv]` as one `[3 W, hidden]` weight with the concatenated biases.
    pub qkv: Option<DevLinear>,
    pub out: Option<DevLinear>,
    /// The attention output bias (kept on its own for layers without heads).
    pub out_bias: CudaSlice<f32>,
    pub ln1: DevLayerNorm,
    pub intermediate: DevLinear,
    pub ffn_out: DevLinear,
    pub ln2: DevLayerNorm,
}

/// Every tensor of the model on the device.
pub(crate) struct DevWeights {
    pub word: CudaSlice<u16>,
    pub position: CudaSlice<u16>,
    pub token_type: CudaSlice<u16>,
    pub embeddings_ln: DevLayerNorm,
    pub layers: Vec<DevLayer>,
    pub pooler: Option<DevLinear>,
    pub classifier: Option<DevLinear>,
    /// Widest intermediate (FFN) size over the layers.
    pub max_intermediate: usize,
    /// Widest attention width (heads x head_dim) over the layers.
    pub max_width: usize,
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

fn upload_f32(rt: &CudaRuntime, values: &[f32]) -> Result<CudaSlice<f32>, RuntimeError> {
    Ok(rt.upload(values)?)
}

fn vector(file: &EtsFile, name: &str, len: usize) -> Result<Vec<f32>, RuntimeError> {
    let v = get(file, name)?;
    check_shape(&v, &[len])?;
    Ok(v.to_dense_f32())
}

/// A `[rows, cols]` tensor of any encoding as dense f32, its shape checked.
fn matrix(file: &EtsFile, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, RuntimeError> {
    let v = get(file, name)?;
    check_shape(&v, &[rows, cols])?;
    Ok(v.to_dense_f32())
}

fn table(
    rt: &CudaRuntime,
    file: &EtsFile,
    name: &str,
    rows: usize,
    h: usize,
) -> Result<CudaSlice<u16>, RuntimeError> {
    Ok(rt.upload(&to_f16_bits(&matrix(file, name, rows, h)?))?)
}

fn layer_norm(
    rt: &CudaRuntime,
    file: &EtsFile,
    w: &str,
    b: &str,
    h: usize,
) -> Result<DevLayerNorm, RuntimeError> {
    Ok(DevLayerNorm {
        gamma: upload_f32(rt, &vector(file, w, h)?)?,
        beta: upload_f32(rt, &vector(file, b, h)?)?,
    })
}

/// Densifies (fallback path) and uploads `weight` `[n, k]` with its bias.
fn linear(
    rt: &CudaRuntime,
    file: &EtsFile,
    weight: &str,
    bias: &str,
    n: usize,
    k: usize,
) -> Result<DevLinear, RuntimeError> {
    let w = matrix(file, weight, n, k)?;
    let b = vector(file, bias, n)?;
    Ok(DevLinear {
        n,
        k,
        weight: rt.upload(&to_f16_bits(&w))?,
        bias: Some(upload_f32(rt, &b)?),
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
    file: &EtsFile,
    c: &ModelConfig,
    i: usize,
) -> Result<DevLayer, RuntimeError> {
    let h = c.hidden_size as usize;
    let heads = c.heads_per_layer.get(i).copied().unwrap_or(0) as usize;
    let width = heads * c.head_dim as usize;
    let name = |t: LayerTensor| t.name(i);
    let out_bias_v = vector(file, &name(LayerTensor::OutputBias), h)?;
    let (qkv, out) = if heads == 0 {
        (None, None)
    } else {
        let mut w = Vec::with_capacity(3 * width * h);
        let mut b = Vec::with_capacity(3 * width);
        for (wt, bt) in [
            (LayerTensor::QueryWeight, LayerTensor::QueryBias),
            (LayerTensor::KeyWeight, LayerTensor::KeyBias),
            (LayerTensor::ValueWeight, LayerTensor::ValueBias),
        ] {
            w.extend(matrix(file, &name(wt), width, h)?);
            b.extend(vector(file, &name(bt), width)?);
        }
        let qkv = DevLinear {
            n: 3 * width,
            k: h,
            weight: rt.upload(&to_f16_bits(&w))?,
            bias: Some(upload_f32(rt, &b)?),
        };
        let out = linear(
            rt,
            file,
            &name(LayerTensor::OutputWeight),
            &name(LayerTensor::OutputBias),
            h,
            width,
        )?;
        (Some(qkv), Some(out))
    };
    let inter = crate::runtime::ffn_width(file, c, i)?;
    let ln = |w: LayerTensor, b: LayerTensor| layer_norm(rt, file, &name(w), &name(b), h);
    Ok(DevLayer {
        heads,
        qkv,
        out,
        out_bias: upload_f32(rt, &out_bias_v)?,
        ln1: ln(LayerTensor::AttentionLnWeight, LayerTensor::AttentionLnBias)?,
        intermediate: linear(
            rt,
            file,
            &name(LayerTensor::IntermediateWeight),
            &name(LayerTensor::IntermediateBias),
            inter,
            h,
        )?,
        ffn_out: linear(
            rt,
            file,
            &name(LayerTensor::FfnOutputWeight),
            &name(LayerTensor::FfnOutputBias),
            h,
            inter,
        )?,
        ln2: ln(LayerTensor::FfnLnWeight, LayerTensor::FfnLnBias)?,
    })
}

/// Checks and uploads every tensor the forward pass needs.
pub(crate) fn upload(rt: &CudaRuntime, file: &EtsFile) -> Result<DevWeights, RuntimeError> {
    let c = file.model();
    check_config(c)?;
    let h = c.hidden_size as usize;
    let word = table(rt, file, names::WORD_EMBEDDINGS, c.vocab_size as usize, h)?;
    let position = table(
        rt,
        file,
        names::POSITION_EMBEDDINGS,
        c.max_position_embeddings as usize,
        h,
    )?;
    let token_type = table(
        rt,
        file,
        names::TOKEN_TYPE_EMBEDDINGS,
        c.type_vocab_size as usize,
        h,
    )?;
    let embeddings_ln = layer_norm(
        rt,
        file,
        names::EMBEDDINGS_LN_WEIGHT,
        names::EMBEDDINGS_LN_BIAS,
        h,
    )?;
    let layers = (0..c.num_layers as usize)
        .map(|i| load_layer(rt, file, c, i))
        .collect::<Result<Vec<_>, _>>()?;
    let pooler = if file.has_tensor(names::POOLER_WEIGHT) {
        Some(linear(
            rt,
            file,
            names::POOLER_WEIGHT,
            names::POOLER_BIAS,
            h,
            h,
        )?)
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
        Some(linear(
            rt,
            file,
            names::CLASSIFIER_WEIGHT,
            names::CLASSIFIER_BIAS,
            labels,
            h,
        )?)
    } else {
        None
    };
    let max_intermediate = layers.iter().map(|l| l.intermediate.n).max().unwrap_or(0);
    let max_width = layers
        .iter()
        .map(|l| l.heads * c.head_dim as usize)
        .max()
        .unwrap_or(0);
    Ok(DevWeights {
        word,
        position,
        token_type,
        embeddings_ln,
        layers,
        pooler,
        classifier,
        max_intermediate,
        max_width,
    })
}
