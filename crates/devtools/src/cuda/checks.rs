//! Device correctness checks of the linear layer: fresh random inputs every run, outputs poisoned
//! with NaN before each launch and checked fully written, compared with the f64-accumulated CPU
//! reference computed from the same 16-bit-rounded inputs.

use std::path::Path;

use ets::format::{
    Activation, Dtype, EncodedTensor, EtsFile, EtsWriter, ModelConfig, Provenance, TensorData,
    WriteOptions,
};

use super::bench::{self, MaskMode};
use ets::runtime::cuda::dispatch::Dispatcher;
use ets::runtime::cuda::gemm::{self, Epilogue, LinearWeight, Scratch};
use ets::runtime::cuda::host::{from_bits, round_trip, to_bits, HostTiles};
use ets::runtime::cuda::tile::{self, TileKernel, TileShape};
use ets::runtime::cuda::upload::{DeviceModel, DeviceTiles};
use ets::runtime::cuda::CudaError;
use ets::runtime::cuda::{device_addr, CudaView};
use ets::runtime::cuda::{CudaRuntime, ElemType};
use ets_testkit::linear::{compare, reference_linear, ErrorStats};
use ets_testkit::rng::Rng;

/// Largest accepted `max |out - ref| / max |ref|`.
pub const TOLERANCE: f64 = 1e-2;

/// Outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Errors against the reference.
    pub err: ErrorStats,
}

impl CheckResult {
    /// Within tolerance and no NaN.
    pub fn pass(&self) -> bool {
        self.err.passes(TOLERANCE)
    }
}

/// Which implementation a check drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPath {
    /// Tile kernel (K split chosen automatically: small cases split).
    Tile,
    /// Tile kernel forced to one CTA per output tile (fused epilogue, no split).
    TileNoSplit,
    /// A specific tile kernel (K splits chosen automatically for its group size).
    Forced(TileKernel),
    /// A specific tile kernel launched twice on the same upload, the output poisoned again in
    /// between: the second result is checked, and must equal the first bit for bit (state the
    /// kernel leaves behind, such as reduction counters, is reset; the sums are deterministic).
    Repeat(TileKernel),
    /// Tile weight densified on the device, then cuBLAS + epilogue.
    TileViaCublas,
    /// `rows` encoding.
    Rows,
    /// `cols` encoding.
    Cols,
}

fn nan_bits(elem: ElemType) -> u16 {
    match elem {
        ElemType::F16 => 0x7E00,
        ElemType::Bf16 => 0x7FC0,
    }
}

fn bits(elem: ElemType, v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| to_bits(elem, x)).collect()
}

/// Runs `w` on the device for fresh inputs and compares with the reference from `w_dense`.
#[allow(clippy::too_many_arguments)]
fn run_and_compare(
    rt: &CudaRuntime,
    rng: &mut Rng,
    elem: ElemType,
    m: usize,
    w: &LinearWeight,
    w_dense: &[f32],
    gelu: bool,
    with_residual: bool,
    fallback: Option<&CudaView<'_, u16>>,
    path: CheckPath,
) -> Result<ErrorStats, CudaError> {
    let (n, k) = w.dims();
    let x = round_trip(elem, &rng.symmetric_vec(m * k, 1.0));
    let bias = rng.symmetric_vec(n, 0.5);
    let residual = round_trip(elem, &rng.symmetric_vec(m * n, 1.0));
    let xd = rt.upload(&bits(elem, &x))?;
    let bd = rt.upload(&bias)?;
    let rd = rt.upload(&bits(elem, &residual))?;
    let mut y = rt.alloc::<u16>(m * n)?;
    rt.fill_u16(&mut y, nan_bits(elem))?;
    let ep = Epilogue {
        bias: Some(bd.as_view()),
        gelu,
        residual: with_residual.then(|| rd.as_view()),
    };
    let mut scratch = Scratch::default();
    let mut first: Option<Vec<u16>> = None;
    let (x_view, mut y_view) = (xd.as_view(), y.as_view_mut());
    // SAFETY: the weight's upload lives in the caller; every device buffer is typed and checked
    // by the launch.
    unsafe {
        match (w, path) {
            (LinearWeight::Tile(v), CheckPath::TileNoSplit) => {
                let kern = tile::auto_kernel(&rt.limits(), v, m);
                tile::tile_gemm_with(rt, &x_view, m, v, &ep, &mut y_view, Some(1), kern)?
            }
            (LinearWeight::Tile(v), CheckPath::Forced(kern)) => {
                tile::tile_gemm_with(rt, &x_view, m, v, &ep, &mut y_view, None, kern)?
            }
            (LinearWeight::Tile(v), CheckPath::Repeat(kern)) => {
                tile::tile_gemm_with(rt, &x_view, m, v, &ep, &mut y_view, None, kern)?;
                first = Some(rt.download(&y_view, m * n)?);
                rt.fill_u16(&mut y_view, nan_bits(elem))?;
                tile::tile_gemm_with(rt, &x_view, m, v, &ep, &mut y_view, None, kern)?
            }
            _ => gemm::linear(rt, &x_view, m, w, fallback, &ep, &mut y_view, &mut scratch)?,
        }
    }
    let out: Vec<u16> = rt.download(&y, m * n)?;
    let differ = first.map_or(0, |f| f.iter().zip(&out).filter(|(a, b)| a != b).count());
    let out: Vec<f32> = out.iter().map(|&b| from_bits(elem, b)).collect();
    let reference = reference_linear(
        &x,
        m,
        k,
        w_dense,
        n,
        Some(&bias),
        gelu,
        with_residual.then_some(&residual[..]),
    );
    let mut err = compare(&out, &reference);
    if differ > 0 {
        println!(
            "{path:?}: {differ} of {} outputs differ between two launches",
            m * n
        );
        err.max_rel = f64::INFINITY;
    }
    Ok(err)
}

/// One synthetic case: an `n x k` weight of density `density` in tiles `th x tw` (or rows/cols).
#[allow(clippy::too_many_arguments)]
pub fn check_case(
    rt: &CudaRuntime,
    rng: &mut Rng,
    elem: ElemType,
    path: CheckPath,
    shape: (usize, usize, usize),
    tile: (usize, usize),
    density: f64,
    gelu: bool,
    residual: bool,
) -> Result<Option<CheckResult>, CudaError> {
    check_case_masked(
        rt,
        rng,
        elem,
        path,
        shape,
        tile,
        (density, MaskMode::Random),
        gelu,
        residual,
    )
}

/// [`check_case`] with tile masks drawn as `mode` says (grouped and balanced masks take other
/// paths through the kernels than random ones).
#[allow(clippy::too_many_arguments)]
pub fn check_case_masked(
    rt: &CudaRuntime,
    rng: &mut Rng,
    elem: ElemType,
    path: CheckPath,
    (m, n, k): (usize, usize, usize),
    (th, tw): (usize, usize),
    (density, mode): (f64, MaskMode),
    gelu: bool,
    residual: bool,
) -> Result<Option<CheckResult>, CudaError> {
    let masks = match mode {
        MaskMode::Random => "",
        MaskMode::Grouped => " grouped",
        MaskMode::Balanced => " balanced",
    };
    let name = format!(
        "{path:?} {} M{m} N{n} K{k} {th}x{tw}{masks} d{density} gelu={} res={}",
        elem.suffix(),
        gelu as u8,
        residual as u8
    );
    if !wanted(&name) {
        return Ok(None);
    }
    let scale = 1.0 / (k as f32).sqrt();
    let w = round_trip(elem, &rng.symmetric_vec(n * k, scale * 1.7));
    let err = match path {
        CheckPath::Tile
        | CheckPath::TileNoSplit
        | CheckPath::TileViaCublas
        | CheckPath::Forced(_)
        | CheckPath::Repeat(_) => {
            let keep = bench::mask(rng, n.div_ceil(th), k.div_ceil(tw), th, density, mode);
            let h =
                HostTiles::from_dense(&w, n, k, th, tw, &keep, elem).map_err(CudaError::Invalid)?;
            let dense = h.to_dense_f32();
            let tiles = DeviceTiles::upload(rt, &h)?;
            let view = tiles.view();
            let fb = if path == CheckPath::TileViaCublas {
                // SAFETY: tiles (the upload the view points into) is alive.
                Some(unsafe { gemm::densify(rt, &view)? })
            } else {
                None
            };
            let lw = LinearWeight::Tile(view);
            let fb = fb.as_ref().map(|d| d.as_view());
            run_and_compare(
                rt,
                rng,
                elem,
                m,
                &lw,
                &dense,
                gelu,
                residual,
                fb.as_ref(),
                path,
            )?
        }
        CheckPath::Rows => {
            let keep = rng.mask(n, density);
            let kept: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
            let mut compact = Vec::with_capacity(kept.len() * k);
            let mut dense = vec![0f32; n * k];
            let mut inv = vec![-1i32; n];
            for (j, &r) in kept.iter().enumerate() {
                compact.extend_from_slice(&w[r * k..(r + 1) * k]);
                dense[r * k..(r + 1) * k].copy_from_slice(&w[r * k..(r + 1) * k]);
                inv[r] = j as i32;
            }
            let (wd, id) = (rt.upload(&bits(elem, &compact))?, rt.upload(&inv)?);
            let lw = LinearWeight::Rows {
                w: device_addr(&wd),
                inv: device_addr(&id),
                n,
                nr: kept.len(),
                k,
                elem,
            };
            run_and_compare(rt, rng, elem, m, &lw, &dense, gelu, residual, None, path)?
        }
        CheckPath::Cols => {
            let keep = rng.mask(k, density);
            let kept: Vec<u32> = (0..k as u32).filter(|&i| keep[i as usize]).collect();
            let mut compact = Vec::with_capacity(kept.len() * n);
            let mut dense = vec![0f32; n * k];
            for r in 0..n {
                for &c in &kept {
                    compact.push(w[r * k + c as usize]);
                    dense[r * k + c as usize] = w[r * k + c as usize];
                }
            }
            let (wd, id) = (rt.upload(&bits(elem, &compact))?, rt.upload(&kept)?);
            let lw = LinearWeight::Cols {
                w: device_addr(&wd),
                idx: device_addr(&id),
                n,
                kc: kept.len(),
                k,
                elem,
            };
            run_and_compare(rt, rng, elem, m, &lw, &dense, gelu, residual, None, path)?
        }
    };
    Ok(Some(CheckResult { name, err }))
}

/// Whether a synthetic case runs: all of them, or with `ETS_CHECK_ONLY` set those whose name
/// contains one of its comma-separated parts (e.g. `Forced(Rs),64x64` to re-check one kernel).
fn wanted(name: &str) -> bool {
    match std::env::var("ETS_CHECK_ONLY") {
        Ok(only) if !only.is_empty() => only.split(',').any(|part| name.contains(part)),
        _ => true,
    }
}

/// The synthetic suite: every tile shape, both types, edge shapes, all paths and epilogues.
pub fn synthetic_suite(rt: &CudaRuntime, rng: &mut Rng) -> Result<Vec<CheckResult>, CudaError> {
    let mut out = Vec::new();
    let shapes = [
        (333usize, 300usize, 200usize),
        (256, 768, 768),
        (130, 2304, 768),
        (200, 768, 3072),
    ];
    let mut ci = 0usize;
    for elem in [ElemType::F16, ElemType::Bf16] {
        let tiles = [(16, 16), (32, 32), (64, 64), (64, 16), (128, 16)];
        for (ti, &(th, tw)) in tiles.iter().enumerate() {
            for (si, &shape) in shapes.iter().enumerate() {
                // The rectangular shapes run on two shapes and two densities only.
                if ti >= 3 && si % 2 == 1 {
                    continue;
                }
                for (di, &d) in [1.0, 0.3, 0.05].iter().enumerate() {
                    if ti >= 3 && di == 1 {
                        continue;
                    }
                    let (gelu, res) = ((si + di) % 2 == 0, (si + di) % 3 == 0);
                    // The automatic choice, unsplit, one forced kernel (cycling through every
                    // kernel this device can run for the case), and the row-walk and TMA kernels always.
                    let usable = tile::usable_kernels(
                        &rt.limits(),
                        &TileShape::new(shape.1, shape.2, th, tw, 0, elem),
                        shape.0,
                    );
                    ci += 1;
                    let pick = usable
                        .get(ci % usable.len().max(1))
                        .copied()
                        .unwrap_or(TileKernel::Mma);
                    let mut paths = vec![
                        CheckPath::Tile,
                        CheckPath::TileNoSplit,
                        CheckPath::Forced(pick),
                    ];
                    for walk in [
                        TileKernel::Walk,
                        TileKernel::Tma128,
                        TileKernel::Tma256,
                        TileKernel::Rs,
                        TileKernel::Sk,
                    ] {
                        if walk != pick && usable.contains(&walk) {
                            paths.push(CheckPath::Forced(walk));
                        }
                    }
                    for path in paths {
                        out.extend(check_case(
                            rt,
                            rng,
                            elem,
                            path,
                            shape,
                            (th, tw),
                            d,
                            gelu,
                            res,
                        )?);
                    }
                }
            }
        }
        for path in [CheckPath::TileViaCublas, CheckPath::Rows, CheckPath::Cols] {
            for &shape in &shapes[..2] {
                out.extend(check_case(
                    rt,
                    rng,
                    elem,
                    path,
                    shape,
                    (16, 16),
                    0.4,
                    true,
                    true,
                )?);
            }
        }
        // The persistent register-operand kernel over many output tiles per CTA: several feature
        // groups in one CTA's run (the union list rebuilt), a partial last token block; and with
        // 128x16 tiles at density 0.02 about a third of the groups keep no tile at all, so CTAs
        // run through several tiles without products (bias, GELU and residual only).
        // Weights whose block rows all keep the same number of tiles (density 1, grouped and
        // balanced masks) come one box per stage where a group's rows keep the same four tiles
        // (not for balanced masks: row by row), also with a partial last group (N = 2000: five
        // block rows of 16 past the last full group; 80 rows in the last 128x16 block row).
        use MaskMode::{Balanced, Grouped, Random};
        for (shape, tile, d, gelu, res) in [
            ((7800, 2304, 768), (16, 16), (1.0, Random), true, true),
            ((7800, 2304, 768), (16, 16), (0.3, Random), false, false),
            ((7800, 2304, 768), (128, 16), (0.02, Random), true, true),
            ((7800, 2304, 768), (16, 16), (0.5, Grouped), true, true),
            ((7800, 2304, 768), (16, 16), (0.5, Balanced), false, true),
            ((7800, 2000, 768), (16, 16), (1.0, Random), true, false),
            ((4000, 2000, 3072), (128, 16), (1.0, Random), false, true),
            ((4000, 2304, 3072), (64, 16), (0.3, Grouped), true, false),
            // Wider tiles: one box per stage (density 1, grouped) or one per kept tile.
            ((7800, 2304, 768), (64, 64), (1.0, Random), true, true),
            ((4000, 2000, 3072), (64, 64), (0.5, Random), false, true),
            ((7800, 2000, 768), (32, 32), (0.5, Grouped), true, false),
            // 64x64 tiles whose two block rows per group keep the same columns (the pruner's
            // tile-grouped method): both warpgroups multiply in every stage; a partial last group.
            ((9000, 2000, 3072), (64, 64), (0.3, Grouped), false, true),
            // An odd number of block rows: the last group's second warpgroup has no features.
            ((7800, 1936, 768), (64, 64), (1.0, Random), true, true),
            // Few stages per group (one or two), with the residual, a partial last group, and
            // runs balanced by work.
            ((7800, 2304, 768), (16, 16), (0.1, Grouped), true, true),
            ((9000, 2000, 768), (64, 64), (0.2, Grouped), false, true),
            ((12000, 3072, 768), (64, 64), (0.1, Random), true, false),
            ((4000, 2304, 3072), (32, 32), (0.3, Random), false, false),
            // Runs balanced by work (8+ output tiles per CTA on 132 multiprocessors, random masks
            // whose groups' unions differ), with a partial last token block.
            ((9000, 3072, 768), (64, 64), (0.5, Random), true, true),
            ((12000, 2304, 768), (32, 32), (0.2, Random), false, false),
        ] {
            let rs_view = TileShape::new(shape.1, shape.2, tile.0, tile.1, 0, elem);
            if tile::usable_kernels(&rt.limits(), &rs_view, shape.0).contains(&TileKernel::Rs) {
                out.extend(check_case_masked(
                    rt,
                    rng,
                    elem,
                    CheckPath::Forced(TileKernel::Rs),
                    shape,
                    tile,
                    d,
                    gelu,
                    res,
                )?);
            }
        }
        // The same one-box weight stages in the TMA union kernels (both token counts per CTA).
        for (i, (shape, tile, d)) in [
            ((1000, 2000, 768), (16, 16), (1.0, Random)),
            ((1000, 2304, 768), (16, 16), (0.5, Grouped)),
            ((1000, 2304, 3072), (64, 16), (0.3, Grouped)),
            ((600, 2000, 768), (128, 16), (1.0, Random)),
        ]
        .into_iter()
        .enumerate()
        {
            let kern = [TileKernel::Tma128, TileKernel::Tma256][i % 2];
            let view = TileShape::new(shape.1, shape.2, tile.0, tile.1, 0, elem);
            if tile::usable_kernels(&rt.limits(), &view, shape.0).contains(&kern) {
                out.extend(check_case_masked(
                    rt,
                    rng,
                    elem,
                    CheckPath::Forced(kern),
                    shape,
                    tile,
                    d,
                    i % 2 == 0,
                    i < 2,
                )?);
            }
        }
        out.extend(split_kernel_suite(rt, rng, elem)?);
    }
    Ok(out)
}

/// The split kernel at small token counts, forced: one token, partial token blocks, up to its
/// largest token count; rows cut into many units (its reduction) and rows keeping no tile;
/// edges in N and K; every tile shape. Every third case launches twice on one upload (the
/// reduction's counters reset, the sums deterministic).
fn split_kernel_suite(
    rt: &CudaRuntime,
    rng: &mut Rng,
    elem: ElemType,
) -> Result<Vec<CheckResult>, CudaError> {
    let mut out = Vec::new();
    for (i, (shape, tile, d)) in [
        ((1, 768, 768), (16, 16), 0.2),
        ((17, 2304, 768), (16, 16), 0.2),
        ((128, 768, 3072), (16, 16), 0.2),
        ((128, 768, 3072), (16, 16), 1.0),
        ((128, 3072, 768), (16, 16), 0.1),
        ((128, 2304, 768), (16, 16), 0.02),
        ((33, 300, 200), (16, 16), 0.5),
        ((96, 2000, 3072), (64, 64), 0.5),
        ((128, 768, 3072), (32, 32), 0.3),
        ((200, 2000, 768), (128, 16), 0.05),
        ((64, 1000, 3072), (64, 16), 0.3),
        ((512, 2304, 768), (16, 16), 0.5),
    ]
    .into_iter()
    .enumerate()
    {
        let view = TileShape::new(shape.1, shape.2, tile.0, tile.1, 0, elem);
        if !tile::usable_kernels(&rt.limits(), &view, shape.0).contains(&TileKernel::Sk) {
            continue;
        }
        let path = if i % 3 == 0 {
            CheckPath::Repeat(TileKernel::Sk)
        } else {
            CheckPath::Forced(TileKernel::Sk)
        };
        out.extend(check_case(
            rt,
            rng,
            elem,
            path,
            shape,
            tile,
            d,
            i % 2 == 0,
            i % 3 != 1,
        )?);
    }
    Ok(out)
}

fn small_config(hidden: u32) -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 1,
        hidden_size: hidden,
        num_heads: 1,
        head_dim: hidden,
        heads_per_layer: vec![1],
        intermediate_size: hidden,
        vocab_size: 1,
        max_position_embeddings: 1,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

/// Writes a small `.ets` with tile (three shapes), rows, cols and dense weights and f32 biases.
pub fn write_check_file(path: &Path, rng: &mut Rng) -> Result<(), CudaError> {
    let fe = |e: ets::format::FormatError| CudaError::Invalid(format!("{}: {e}", path.display()));
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true }).map_err(fe)?;
    let specs: [(&str, usize, usize, usize, f64); 5] = [
        ("t16", 300, 264, 16, 0.3),
        ("t32", 768, 768, 32, 0.5),
        ("t64", 2304, 768, 64, 0.2),
        ("rows", 520, 384, 0, 0.5),
        ("cols", 384, 520, 0, 0.5),
    ];
    for (name, n, k, t, d) in specs {
        let data = rng.symmetric_vec(n * k, 1.0 / (k as f32).sqrt());
        let enc = match name {
            "rows" => {
                let kept: Vec<u32> = (0..n as u32)
                    .filter(|_| rng.next_f32() < d as f32)
                    .collect();
                EncodedTensor::rows(n, k, &data, &kept, Dtype::F16)
            }
            "cols" => {
                let kept: Vec<u32> = (0..k as u32)
                    .filter(|_| rng.next_f32() < d as f32)
                    .collect();
                EncodedTensor::cols(n, k, &data, &kept, Dtype::F16)
            }
            _ => {
                let keep = rng.mask(n.div_ceil(t) * k.div_ceil(t), d);
                EncodedTensor::tile(n, k, &data, t, t, &keep, Dtype::F16)
            }
        }
        .map_err(fe)?;
        w.add_tensor(&format!("check.{name}.weight"), &enc)
            .map_err(fe)?;
        let bias = EncodedTensor::dense(vec![n as u64], Dtype::F32, &rng.symmetric_vec(n, 0.5))
            .map_err(fe)?;
        w.add_tensor(&format!("check.{name}.bias"), &bias)
            .map_err(fe)?;
    }
    let dense = EncodedTensor::dense(
        vec![256, 384],
        Dtype::F16,
        &rng.symmetric_vec(256 * 384, 0.05),
    )
    .map_err(fe)?;
    w.add_tensor("check.dense.weight", &dense).map_err(fe)?;
    w.finish(
        small_config(384),
        serde_json::json!({}),
        Provenance::default(),
    )
    .map_err(fe)
}

/// Uploads `file` as one allocation and checks every 2-D weight through the dispatcher (and the
/// tile kernel directly for tile weights) against the format's own densified values.
pub fn file_suite(
    rt: &CudaRuntime,
    rng: &mut Rng,
    file: &EtsFile,
    m: usize,
) -> Result<Vec<CheckResult>, CudaError> {
    let model = DeviceModel::upload(rt, file)?;
    let dispatcher = Dispatcher::new();
    let mut out = Vec::new();
    for v in file.tensors().filter(|v| v.shape.len() == 2) {
        let lw = model.linear(v.name)?;
        let elem = lw.elem();
        let (n, k) = lw.dims();
        if n > 8192 || k > 8192 {
            continue; // embeddings: not a linear layer
        }
        let dense = round_trip(elem, &v.to_dense_f32());
        let bias_name = v.name.replace(".weight", ".bias");
        let bias = file.tensor(&bias_name).ok().map(|b| b.to_dense_f32());
        let x = round_trip(elem, &rng.symmetric_vec(m * k, 1.0));
        let xd = rt.upload(&bits(elem, &x))?;
        let mut y = rt.alloc::<u16>(m * n)?;
        let ep = Epilogue {
            bias: model.f32_values(&bias_name).ok(),
            gelu: false,
            residual: None,
        };
        let reference = reference_linear(&x, m, k, &dense, n, bias.as_deref(), false, None);
        let mut scratch = Scratch::default();
        let mut runs: Vec<(&str, bool)> = vec![("dispatch", false)];
        if matches!(lw, LinearWeight::Tile(_)) {
            runs.push(("tile kernel", true));
        }
        for (label, force_tile) in runs {
            rt.fill_u16(&mut y, nan_bits(elem))?;
            let (x_view, mut y_view) = (xd.as_view(), y.as_view_mut());
            // SAFETY: the model's upload outlives this loop; every device buffer is typed and
            // checked by the launch.
            unsafe {
                if force_tile {
                    gemm::linear(rt, &x_view, m, &lw, None, &ep, &mut y_view, &mut scratch)?;
                } else {
                    dispatcher.run_linear(
                        rt,
                        v.name,
                        &x_view,
                        m,
                        &lw,
                        &ep,
                        &mut y_view,
                        &mut scratch,
                    )?;
                }
            }
            let got: Vec<u16> = rt.download(&y, m * n)?;
            let got: Vec<f32> = got.iter().map(|&b| from_bits(elem, b)).collect();
            let enc = match v.data {
                TensorData::Tile(t) => {
                    format!("tile {}x{} d{:.2}", t.tile_rows, t.tile_cols, t.density())
                }
                TensorData::Rows { .. } => "rows".into(),
                TensorData::Cols { .. } => "cols".into(),
                TensorData::Dense { .. } => "dense".into(),
            };
            out.push(CheckResult {
                name: format!("file {} [{enc}] {label} M{m}", v.name),
                err: compare(&got, &reference),
            });
        }
    }
    Ok(out)
}
