//! Benchmarks of the tile kernel against cuBLAS dense in the same process, and the ceilings they
//! are judged by (device-to-device copy bandwidth, cuBLAS dense rate).

use ets::runtime::cuda::dispatch::median_ms;
use ets::runtime::cuda::gemm::{self, Epilogue};
use ets::runtime::cuda::host::{to_bits, HostTiles};
use ets::runtime::cuda::tile::{self, TileKernel};
use ets::runtime::cuda::upload::DeviceTiles;
use ets::runtime::cuda::CudaError;
use ets::runtime::cuda::{device_addr, CudaRuntime, CudaSlice, ElemType};
use ets_testkit::rng::Rng;

/// How kept tiles are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskMode {
    /// Uniformly random tiles over the grid.
    Random,
    /// Every group of block rows a CTA owns (128 features) keeps the same tile columns.
    Grouped,
    /// Every block row keeps the same number of tiles, at random columns (what
    /// `et-convert --method tile-balanced` produces).
    Balanced,
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct GemmResult {
    /// Tokens (M).
    pub tokens: usize,
    /// In features (K).
    pub k: usize,
    /// Out features (N).
    pub n: usize,
    /// Tile edge (height).
    pub tile: usize,
    /// Tile width.
    pub tw: usize,
    /// Kernel the automatic choice ran.
    pub kernel: TileKernel,
    /// Per-kernel ms: (kernel, median ms) for every tile kernel measured.
    pub per_kernel: Vec<(TileKernel, f64)>,
    /// Tile density.
    pub density: f64,
    /// Mask placement.
    pub mode: MaskMode,
    /// Tile kernel ms (median).
    pub tile_ms: f64,
    /// cuBLAS dense ms (median, full dense random weight).
    pub cublas_ms: f64,
    /// Bytes any kernel of this weight must move at least: the kept tiles, the columns of X that
    /// some kept tile multiplies (read once), and Y (written once).
    pub min_bytes: f64,
}

impl GemmResult {
    /// cuBLAS time over tile-kernel time.
    pub fn ratio(&self) -> f64 {
        self.cublas_ms / self.tile_ms
    }
    /// Tile kernel GB/s over its minimum bytes.
    pub fn tile_gbps(&self) -> f64 {
        self.min_bytes / (self.tile_ms * 1e6)
    }
    /// The memory floor: the best ratio to cuBLAS any kernel of this weight could reach if it
    /// moved only its minimum bytes at `copy_gbps` (read plus written, the device-to-device rate).
    pub fn floor_ratio(&self, copy_gbps: f64) -> f64 {
        self.cublas_ms / (self.min_bytes / (copy_gbps * 1e6))
    }
}

/// Share of X's columns that some kept tile multiplies (the columns a kernel must read), from a
/// `gr x gc` mask of tiles `tw` wide over `k` columns.
pub fn x_columns_read(keep: &[bool], gr: usize, gc: usize, tw: usize, k: usize) -> f64 {
    let read: usize = (0..gc)
        .filter(|&c| (0..gr).any(|r| keep[r * gc + c]))
        .map(|c| tw.min(k - c * tw))
        .sum();
    read as f64 / k.max(1) as f64
}

/// Per-call milliseconds, with the batch sized so one batch lasts about 2 ms.
pub fn time_call(
    rt: &CudaRuntime,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    let probe = median_ms(rt, 1, 3, &mut f)?;
    let per = ((2.0 / probe.max(1e-4)).ceil() as usize).clamp(3, 200);
    median_ms(rt, 9, per, f)
}

/// Device-to-device copy bandwidth in GB/s (bytes read plus written) over `bytes`-sized buffers.
pub fn d2d_gbps(rt: &CudaRuntime, bytes: usize) -> Result<f64, CudaError> {
    let mut a = rt.alloc::<u16>(bytes / 2)?;
    let mut b = rt.alloc::<u16>(bytes / 2)?;
    rt.fill_u16(&mut a, 0x3C00)?;
    let ms = time_call(rt, || rt.copy_d2d(&mut b, &a))?;
    Ok(2.0 * bytes as f64 / (ms * 1e6))
}

/// cuBLAS f16 dense rate in TFLOP/s on an `s x s x s` product of random data.
pub fn cublas_tflops(rt: &CudaRuntime, rng: &mut Rng, s: usize) -> Result<f64, CudaError> {
    let x = random_dev(rt, rng, s * s)?;
    let w = random_dev(rt, rng, s * s)?;
    let mut y = rt.alloc::<u16>(s * s)?;
    let (x, mut y) = (x.as_view(), y.as_view_mut());
    // SAFETY: w holds s x s f16 values, allocated above and alive.
    let ms = time_call(rt, || unsafe {
        gemm::dense_gemm(rt, ElemType::F16, &x, s, s, s, device_addr(&w), s, &mut y)
    })?;
    Ok(2.0 * (s as f64).powi(3) / (ms * 1e9))
}

/// Uploads `n` random f16 values in [-1, 1) (generated in 1 Mi chunks, tiled to length).
pub fn random_dev(rt: &CudaRuntime, rng: &mut Rng, n: usize) -> Result<CudaSlice<u16>, CudaError> {
    let chunk: Vec<u16> = (0..(1usize << 20).min(n.max(1)))
        .map(|_| to_bits(ElemType::F16, rng.symmetric(1.0)))
        .collect();
    let tmp = rt.upload(&chunk)?;
    let mut buf = rt.alloc::<u16>(n)?;
    let mut off = 0usize;
    while off < n {
        let len = chunk.len().min(n - off);
        rt.copy_d2d(&mut buf.slice_mut(off..off + len), &tmp.slice(..len))?;
        off += len;
    }
    rt.synchronize()?;
    Ok(buf)
}

/// A tile mask of `gr x gc` tiles of height `tile` at `density`, drawn the way `mode` says.
pub(crate) fn mask(
    rng: &mut Rng,
    gr: usize,
    gc: usize,
    tile: usize,
    density: f64,
    mode: MaskMode,
) -> Vec<bool> {
    match mode {
        MaskMode::Random => rng.mask(gr * gc, density),
        MaskMode::Grouped => {
            let rows_per_group = (tile::TILE_BN / tile).max(1);
            let mut keep = vec![false; gr * gc];
            for g0 in (0..gr).step_by(rows_per_group) {
                let cols = rng.mask(gc, density);
                for br in g0..(g0 + rows_per_group).min(gr) {
                    keep[br * gc..(br + 1) * gc].copy_from_slice(&cols);
                }
            }
            keep
        }
        MaskMode::Balanced => (0..gr).flat_map(|_| rng.mask(gc, density)).collect(),
    }
}

/// Shared inputs for a sweep: one random X of the largest size and one dense W per shape.
pub struct Inputs {
    x: CudaSlice<u16>,
    w_dense: Vec<f32>,
    w_dev: CudaSlice<u16>,
    y: CudaSlice<u16>,
    n: usize,
    k: usize,
}

impl Inputs {
    /// Random X for up to `max_tokens x k`, a random dense `n x k` weight, and Y.
    pub fn new(
        rt: &CudaRuntime,
        rng: &mut Rng,
        max_tokens: usize,
        n: usize,
        k: usize,
    ) -> Result<Self, CudaError> {
        let scale = 1.0 / (k as f32).sqrt();
        let w_dense = rng.symmetric_vec(n * k, scale);
        let bits: Vec<u16> = w_dense.iter().map(|&v| to_bits(ElemType::F16, v)).collect();
        Ok(Self {
            x: random_dev(rt, rng, max_tokens * k)?,
            w_dev: rt.upload(&bits)?,
            y: rt.alloc(max_tokens * n)?,
            w_dense,
            n,
            k,
        })
    }
}

/// Measures the tile kernels and cuBLAS for one configuration (tile `th x tw`).
#[allow(clippy::too_many_arguments)]
pub fn bench_one(
    rt: &CudaRuntime,
    rng: &mut Rng,
    inp: &mut Inputs,
    tokens: usize,
    (th, tw): (usize, usize),
    density: f64,
    mode: MaskMode,
    only: Option<&str>,
) -> Result<GemmResult, CudaError> {
    let (n, k) = (inp.n, inp.k);
    let (gr, gc) = (n.div_ceil(th), k.div_ceil(tw));
    let keep = mask(rng, gr, gc, th, density, mode);
    let h = HostTiles::from_dense(&inp.w_dense, n, k, th, tw, &keep, ElemType::F16)
        .map_err(CudaError::Invalid)?;
    let tiles = DeviceTiles::upload(rt, &h)?;
    let view = tiles.view();
    let ep = Epilogue::default();
    let dev = rt.limits();
    let auto = tile::auto_kernel(&dev, &view, tokens);
    // The unmeasured default first, then every other usable kernel; or the one kernel named
    // (case-insensitive), which then is the result's kernel.
    let kernels: Vec<TileKernel> = match only {
        None => std::iter::once(auto)
            .chain(
                tile::usable_kernels(&dev, &view, tokens)
                    .into_iter()
                    .filter(|&kk| kk != auto),
            )
            .collect(),
        Some(name) => {
            let usable = tile::usable_kernels(&dev, &view, tokens);
            let found = usable
                .iter()
                .copied()
                .find(|kk| format!("{kk:?}").eq_ignore_ascii_case(name));
            vec![found.ok_or_else(|| {
                CudaError::Invalid(format!(
                    "kernel {name:?} is not usable for this shape (usable: {usable:?})"
                ))
            })?]
        }
    };
    let auto = kernels[0];
    let mut per_kernel = Vec::new();
    let x = inp.x.as_view();
    let mut y = inp.y.as_view_mut();
    for kern in kernels {
        // SAFETY: tiles (the upload the view points into) outlives the calls; X and Y are
        // checked by the launch.
        let ms = time_call(rt, || unsafe {
            tile::tile_gemm_with(rt, &x, tokens, &view, &ep, &mut y, None, kern)
        })?;
        per_kernel.push((kern, ms));
    }
    let tile_ms = per_kernel.first().map(|p| p.1).unwrap_or(f64::NAN);
    // SAFETY: inp.w_dev holds N x K values and is alive; X and Y are checked.
    let w_dev = device_addr(&inp.w_dev);
    let cublas_ms = time_call(rt, || unsafe {
        gemm::dense_gemm(rt, ElemType::F16, &x, k, tokens, k, w_dev, n, &mut y)
    })?;
    let x_read = x_columns_read(&keep, gr, gc, tw, k);
    let min_bytes =
        h.values.len() as f64 * 2.0 + (tokens * k * 2) as f64 * x_read + (tokens * n * 2) as f64;
    Ok(GemmResult {
        tokens,
        k,
        n,
        tile: th,
        tw,
        kernel: auto,
        per_kernel,
        density: h.density(),
        mode,
        tile_ms,
        cublas_ms,
        min_bytes,
    })
}

/// The goal ratio (speed vs cuBLAS) at large token counts for a density, if one is set.
pub fn goal(density: f64) -> Option<f64> {
    [(1.0, 0.8), (0.5, 1.6), (0.2, 3.5), (0.1, 6.0)]
        .iter()
        .find(|(d, _)| (density - d).abs() < 0.02)
        .map(|&(_, g)| g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_columns_read_counts_columns_some_tile_keeps() {
        // 2 block rows x 3 tile columns of 16 over K = 40 (the last column 8 wide).
        let keep = [true, false, false, false, false, true];
        assert!((x_columns_read(&keep, 2, 3, 16, 40) - 24.0 / 40.0).abs() < 1e-12);
        assert_eq!(x_columns_read(&[false; 6], 2, 3, 16, 40), 0.0);
        assert_eq!(x_columns_read(&[true; 6], 2, 3, 16, 40), 1.0);
        // Grouped masks read only their groups' union of columns.
        let mut rng = Rng::new(7);
        let (gr, gc) = (6, 48);
        let keep = mask(&mut rng, gr, gc, 64, 0.5, MaskMode::Grouped);
        let union = (0..gc)
            .filter(|&c| (0..gr).any(|r| keep[r * gc + c]))
            .count();
        assert_eq!(
            x_columns_read(&keep, gr, gc, 16, gc * 16),
            union as f64 / gc as f64
        );
    }
}
