//! Tile weights built on the host ([`HostTiles`]: tests, checks, benchmarks) put on the device
//! as three small allocations, with the view a tile kernel takes.

use cudarc::driver::CudaSlice;

use super::super::device::{addr, CudaRuntime};
use super::super::error::CudaError;
use super::super::host::HostTiles;
use super::TileDeviceView;

/// A host-built tile weight on the device. The buffers live as long as this value; `view` points
/// into them.
pub struct DeviceTiles {
    _bitmap: CudaSlice<u64>,
    _row_offsets: CudaSlice<u32>,
    _values: CudaSlice<u16>,
    _plans: Option<CudaSlice<u8>>,
    view: TileDeviceView,
}

impl DeviceTiles {
    /// What the tile kernels read; valid while `self` lives.
    pub fn view(&self) -> TileDeviceView {
        self.view
    }

    /// Uploads the bitmap, row offsets and values of `h`.
    pub fn upload(rt: &CudaRuntime, h: &HostTiles) -> Result<Self, CudaError> {
        let (bitmap, row_offsets, values) = (
            rt.upload(&h.bitmap)?,
            rt.upload(&h.row_offsets)?,
            rt.upload(&h.values)?,
        );
        let at = super::TileAddrs {
            bitmap: addr(&bitmap),
            row_offsets: addr(&row_offsets),
            values: addr(&values),
        };
        let (view, plans) = super::tile_view(
            rt,
            &h.bitmap,
            &h.row_offsets,
            super::host_geometry(h),
            h.rows,
            h.elem,
            at,
        )?;
        Ok(Self {
            _bitmap: bitmap,
            _row_offsets: row_offsets,
            _values: values,
            _plans: plans,
            view,
        })
    }
}
