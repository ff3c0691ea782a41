//! Tile weights built on the host ([`HostTiles`]: tests, checks, benchmarks) put on the device
//! as three small allocations, with the view a tile kernel takes.

use super::super::device::{CudaRuntime, DevBuf};
use super::super::error::CudaError;
use super::super::host::{union_fractions, HostTiles};
use super::TileDeviceView;

/// A host-built tile weight on the device. The buffers live as long as this value; `view` points
/// into them.
pub struct DeviceTiles {
    _bitmap: DevBuf,
    _row_offsets: DevBuf,
    _values: DevBuf,
    _rs_plans: Option<DevBuf>,
    /// What the tile kernels read.
    pub view: TileDeviceView,
}

impl DeviceTiles {
    /// Uploads the bitmap, row offsets and values of `h`.
    pub fn upload(rt: &CudaRuntime, h: &HostTiles) -> Result<Self, CudaError> {
        let (bitmap, row_offsets, values) = (
            rt.upload(&h.bitmap)?,
            rt.upload(&h.row_offsets)?,
            rt.upload(&h.values)?,
        );
        let plans = super::upload_rs_plans(rt, &h.bitmap, &h.row_offsets, h.geometry())?;
        let view = TileDeviceView {
            bitmap: bitmap.ptr(),
            row_offsets: row_offsets.ptr(),
            values: values.ptr(),
            rows: h.rows,
            cols: h.cols,
            th: h.th,
            tw: h.tw,
            grid_rows: h.grid_rows,
            grid_cols: h.grid_cols,
            kept: h.kept(),
            elem: h.elem,
            has_element_bitmaps: false,
            unions: Some(union_fractions(&h.bitmap, h.grid_rows, h.grid_cols, h.th)),
            work_spread: Some(h.work_spread()),
            rs_plans: plans.as_ref().map_or(0, |(b, _)| b.ptr()),
            rs_plan_stride: plans.as_ref().map_or(0, |(_, s)| *s),
        };
        Ok(Self {
            _bitmap: bitmap,
            _row_offsets: row_offsets,
            _values: values,
            _rs_plans: plans.map(|(b, _)| b),
            view,
        })
    }
}
