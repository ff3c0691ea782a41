//! Decoding ONNX `TensorProto`s (inline or external data) into f32.

use std::path::{Component, Path, PathBuf};

use super::proto::{data_type as dt, TensorProto, DATA_LOCATION_EXTERNAL};
use crate::ingest::{map_file, IngestError};

/// Where the model lives: needed for error messages and external data.
pub(crate) struct Ctx {
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Ctx {
    fn bad(&self, t: &TensorProto, reason: impl Into<String>) -> IngestError {
        IngestError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            reason: reason.into(),
        }
    }
}

/// Element size in bytes of a data type we can decode, or `None`.
fn elem_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        dt::UINT8 | dt::INT8 | dt::BOOL => 1,
        dt::UINT16 | dt::INT16 | dt::FLOAT16 | dt::BFLOAT16 => 2,
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::INT64 | dt::DOUBLE | dt::UINT64 => 8,
        _ => return None,
    })
}

/// A readable name for an ONNX data type.
pub(crate) fn type_name(data_type: i32) -> String {
    match data_type {
        dt::FLOAT => "float32".into(),
        dt::UINT8 => "uint8".into(),
        dt::INT8 => "int8".into(),
        dt::UINT16 => "uint16".into(),
        dt::INT16 => "int16".into(),
        dt::INT32 => "int32".into(),
        dt::INT64 => "int64".into(),
        dt::BOOL => "bool".into(),
        dt::FLOAT16 => "float16".into(),
        dt::DOUBLE => "float64".into(),
        dt::UINT32 => "uint32".into(),
        dt::UINT64 => "uint64".into(),
        dt::BFLOAT16 => "bfloat16".into(),
        other => format!("data type {other}"),
    }
}

/// The tensor's dims as sizes; negative dims are an error.
pub(crate) fn dims(ctx: &Ctx, t: &TensorProto) -> Result<Vec<usize>, IngestError> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| ctx.bad(t, format!("negative dim {d}"))))
        .collect()
}

/// The external-data entries of a tensor: (location, offset, length).
fn external_ref(ctx: &Ctx, t: &TensorProto) -> Result<(String, u64, Option<u64>), IngestError> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        let num = || {
            e.value
                .parse::<u64>()
                .map_err(|_| IngestError::ExternalData {
                    path: ctx.path.clone(),
                    tensor: t.name.clone(),
                    location: location.clone().unwrap_or_default(),
                    reason: format!("{} is not a number: {:?}", e.key, e.value),
                })
        };
        match e.key.as_str() {
            "location" => location = Some(e.value.clone()),
            "offset" => offset = num()?,
            "length" => length = Some(num()?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| IngestError::ExternalData {
        path: ctx.path.clone(),
        tensor: t.name.clone(),
        location: String::new(),
        reason: "no location entry".into(),
    })?;
    Ok((location, offset, length))
}

/// Resolves an external-data location inside the model's folder, refusing anything else.
pub(crate) fn external_path(ctx: &Ctx, t: &TensorProto) -> Result<PathBuf, IngestError> {
    let (location, _, _) = external_ref(ctx, t)?;
    let err = |reason: &str| IngestError::ExternalData {
        path: ctx.path.clone(),
        tensor: t.name.clone(),
        location: location.clone(),
        reason: reason.into(),
    };
    let rel = Path::new(&location);
    if location.is_empty() {
        return Err(err("empty location"));
    }
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(err("absolute paths are not allowed"));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err("the path leaves the model's folder"));
    }
    let full = ctx.dir.join(rel);
    if !full.is_file() {
        return Err(err("file not found"));
    }
    // Symbolic links could still point elsewhere: compare the resolved paths.
    let real = full.canonicalize().map_err(|e| IngestError::io(&full, e))?;
    let real_dir = ctx
        .dir
        .canonicalize()
        .map_err(|e| IngestError::io(&ctx.dir, e))?;
    if !real.starts_with(&real_dir) {
        return Err(err("the path leaves the model's folder"));
    }
    Ok(full)
}

/// Checks an external tensor's file and byte range without reading the data.
pub(crate) fn check_external(ctx: &Ctx, t: &TensorProto) -> Result<(), IngestError> {
    if t.data_location != DATA_LOCATION_EXTERNAL {
        return Ok(());
    }
    let full = external_path(ctx, t)?;
    let (location, offset, length) = external_ref(ctx, t)?;
    let size = std::fs::metadata(&full)
        .map_err(|e| IngestError::io(&full, e))?
        .len();
    let need = expected_bytes(ctx, t)? as u64;
    let len = length.unwrap_or(need);
    if len != need || offset.checked_add(len).map_or(true, |end| end > size) {
        return Err(IngestError::ExternalData {
            path: ctx.path.clone(),
            tensor: t.name.clone(),
            location,
            reason: format!(
                "range {offset}+{len} does not fit the file ({size} bytes) or the tensor ({need} bytes)"
            ),
        });
    }
    Ok(())
}

fn expected_bytes(ctx: &Ctx, t: &TensorProto) -> Result<usize, IngestError> {
    let size = elem_size(t.data_type).ok_or_else(|| IngestError::UnsupportedDtype {
        path: ctx.path.clone(),
        tensor: t.name.clone(),
        dtype: type_name(t.data_type),
    })?;
    let count = dims(ctx, t)?
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|c| c.checked_mul(size))
        .ok_or_else(|| ctx.bad(t, "size overflows"))?;
    Ok(count)
}

/// Decodes a tensor's values as f32 (integers converted exactly where f32 can hold them).
pub(crate) fn decode_f32(ctx: &Ctx, t: &TensorProto) -> Result<Vec<f32>, IngestError> {
    let count: usize = dims(ctx, t)?.iter().product();
    let nbytes = expected_bytes(ctx, t)?;
    let values = if t.data_location == DATA_LOCATION_EXTERNAL {
        let full = external_path(ctx, t)?;
        let (_, offset, _) = external_ref(ctx, t)?;
        let map = map_file(&full)?;
        let start = usize::try_from(offset).map_err(|_| ctx.bad(t, "offset too large"))?;
        let bytes = start
            .checked_add(nbytes)
            .and_then(|end| map.get(start..end))
            .ok_or_else(|| IngestError::ExternalData {
                path: ctx.path.clone(),
                tensor: t.name.clone(),
                location: full.display().to_string(),
                reason: format!(
                    "range {start}+{nbytes} is past the end ({} bytes)",
                    map.len()
                ),
            })?;
        from_raw(t.data_type, bytes)
    } else if !t.raw_data.is_empty() {
        if t.raw_data.len() != nbytes {
            return Err(ctx.bad(
                t,
                format!(
                    "raw_data has {} bytes, dims need {nbytes}",
                    t.raw_data.len()
                ),
            ));
        }
        from_raw(t.data_type, &t.raw_data)
    } else {
        from_typed(t)
    };
    let values = values.ok_or_else(|| IngestError::UnsupportedDtype {
        path: ctx.path.clone(),
        tensor: t.name.clone(),
        dtype: type_name(t.data_type),
    })?;
    if values.len() != count {
        return Err(ctx.bad(
            t,
            format!(
                "{} values stored, dims {:?} need {count}",
                values.len(),
                t.dims
            ),
        ));
    }
    Ok(values)
}

fn from_raw(data_type: i32, b: &[u8]) -> Option<Vec<f32>> {
    let v = match data_type {
        dt::FLOAT => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        dt::FLOAT16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        dt::BFLOAT16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        dt::DOUBLE => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        dt::INT8 => b.iter().map(|&x| x as i8 as f32).collect(),
        dt::UINT8 | dt::BOOL => b.iter().map(|&x| x as f32).collect(),
        dt::INT16 => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        dt::UINT16 => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        dt::INT32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        dt::UINT32 => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        dt::INT64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        dt::UINT64 => b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    };
    Some(v)
}

/// Values stored in the typed repeated fields (small tensors, constants).
fn from_typed(t: &TensorProto) -> Option<Vec<f32>> {
    Some(match t.data_type {
        dt::FLOAT => t.float_data.clone(),
        dt::DOUBLE => t.double_data.iter().map(|&x| x as f32).collect(),
        dt::INT64 => t.int64_data.iter().map(|&x| x as f32).collect(),
        dt::UINT32 | dt::UINT64 => t.uint64_data.iter().map(|&x| x as f32).collect(),
        dt::FLOAT16 => t
            .int32_data
            .iter()
            .map(|&x| half::f16::from_bits(x as u16).to_f32())
            .collect(),
        dt::BFLOAT16 => t
            .int32_data
            .iter()
            .map(|&x| half::bf16::from_bits(x as u16).to_f32())
            .collect(),
        dt::INT8 | dt::UINT8 | dt::INT16 | dt::UINT16 | dt::INT32 | dt::BOOL => {
            t.int32_data.iter().map(|&x| x as f32).collect()
        }
        _ => return None,
    })
}
