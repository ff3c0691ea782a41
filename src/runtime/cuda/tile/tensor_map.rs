//! TMA tensor maps of the TMA-fed kernels ([`super::tma`], [`super::rs`]): encoded on the host
//! at each launch (a host-only driver call, no device work) and passed by value as
//! `__grid_constant__` parameters.

use cudarc::driver::{sys, DeviceRepr};

use super::super::device::ElemType;
use super::super::error::CudaError;
use super::common::TileDeviceView;
use super::rs_plan::uniform_row_tiles;

/// The 32-byte swizzle (16-column slices of 16-bit values).
pub(super) const SW32: sys::CUtensorMapSwizzle = sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B;
/// The 128-byte swizzle (64-column rows of 16-bit values).
pub(super) const SW128: sys::CUtensorMapSwizzle =
    sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B;
/// Columns per narrow TMA copy (one 32-byte swizzle row of 16-bit values).
pub(super) const SLICE: u32 = 16;

/// A tensor map as a kernel parameter: the driver's 128-byte `CUtensorMap`, 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct TensorMap(sys::CUtensorMap);

// SAFETY: CUtensorMap is plain data laid out as the kernels' `const __grid_constant__
// CUtensorMap` parameter (128 bytes, 64-byte aligned); transparent keeps that layout.
unsafe impl DeviceRepr for TensorMap {}

fn map_type(elem: ElemType) -> sys::CUtensorMapDataType {
    match elem {
        ElemType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        ElemType::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    }
}

/// Encodes a tiled tensor map over 16-bit values at `addr`: `dims[0]` is the contiguous dimension,
/// `strides` the byte strides of dimensions 1.. . Elements outside `dims` read as zero. Encoding
/// touches no device memory; the kernel that reads through the map relies on `addr` holding
/// `dims` at `strides`.
pub(super) fn encode(
    addr: u64,
    elem: ElemType,
    dims: &[u64],
    strides: &[u64],
    boxes: &[u32],
    swizzle: sys::CUtensorMapSwizzle,
) -> Result<TensorMap, CudaError> {
    if dims.len() != boxes.len() || strides.len() + 1 != dims.len() || dims.len() > 5 {
        return Err(CudaError::Invalid(format!(
            "tensor map: {} dims, {} strides, {} box extents",
            dims.len(),
            strides.len(),
            boxes.len()
        )));
    }
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let ones = [1u32; 5];
    // SAFETY: the arrays hold `dims.len()` (resp. one fewer) entries as the call requires (checked
    // above), and the map is written in place; the call only encodes.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            map_type(elem),
            dims.len() as u32,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            ones.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(CudaError::driver(format!(
        "encoding a tensor map (dims {dims:?}, box {boxes:?})"
    )))?;
    Ok(TensorMap(map))
}

/// The two maps of X every TMA-fed kernel takes: 16-column boxes with the 32-byte swizzle (for
/// stages whose union columns are scattered) and 64-column boxes with the 128-byte swizzle (for
/// stages whose union columns are contiguous), `bm` rows each.
pub(super) fn x_maps(
    x: u64,
    m: usize,
    w: &TileDeviceView,
    bm: usize,
) -> Result<[TensorMap; 2], CudaError> {
    let dims = [w.cols as u64, m as u64];
    let pitch = [w.cols as u64 * 2];
    let narrow = encode(x, w.elem, &dims, &pitch, &[SLICE, bm as u32], SW32)?;
    let wide = encode(x, w.elem, &dims, &pitch, &[64, bm as u32], SW128)?;
    Ok([narrow, wide])
}

/// Tiles per block row when every block row may keep the same number: the kept count is a
/// multiple of the block rows, so block row r may start at tile r x cnt. A tensor map with that
/// row pitch then copies a stage of a whole group's rows in one box; the kernels use it only for
/// the stages whose rows do start there (the register-operand kernel's plans say so, the TMA
/// kernel checks). One copy per stage instead of one per block row or tile is what makes
/// 16-column tiles cheap to stream.
pub(super) fn tiles_per_block_row(w: &TileDeviceView) -> Option<usize> {
    uniform_row_tiles(w.kept, w.grid_rows)
}

/// 128-byte lines of one tile as it lies in the file.
pub(super) fn tile_lines(w: &TileDeviceView) -> usize {
    w.th * w.tw * 2 / 128
}
