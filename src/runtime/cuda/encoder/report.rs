//! Per-projection report: what ran for each weight at a batch's token count, its time, and
//! cuBLAS's time on a dense matrix of the same shape (`et-run --report`).

use crate::runtime::cuda::gemm::{dense_gemm, densify};
use crate::runtime::cuda::{
    median_ms, Choice, CudaError, CudaRuntime, DevBuf, ElemType, LinearWeight, Scratch,
};
use crate::runtime::{RuntimeError, TokenBatch};

use super::forward::{project, Fuse};
use super::weights::Proj;
use super::CudaEncoder;

/// How one projection ran and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionReport {
    /// The weight's tensor name.
    pub name: String,
    /// Out features.
    pub n: usize,
    /// In features.
    pub k: usize,
    /// Rows (tokens) the projection ran on.
    pub tokens: usize,
    /// Stored density of the weight (1 for dense).
    pub density: f64,
    /// What ran: `tile <kernel>` or `cublas (<encoding>)`.
    pub ran: String,
    /// Why the dispatcher chose it.
    pub reason: String,
    /// Milliseconds of the projection as it runs in the forward pass (epilogue included).
    pub ms: f64,
    /// Milliseconds of cuBLAS on a dense `[n, k]` f16 matrix, no epilogue.
    pub cublas_ms: f64,
}

/// Formats reports as a text table with a total row.
pub fn format_report(rows: &[ProjectionReport]) -> String {
    let mut s = format!(
        "{:<46} {:>5} {:>5} {:>6} {:>7} {:<12} {:>9} {:>9} {:>7}\n",
        "weight", "N", "K", "tokens", "density", "ran", "ms", "cublas ms", "speedup"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<46} {:>5} {:>5} {:>6} {:>7.3} {:<12} {:>9.4} {:>9.4} {:>6.2}x\n",
            r.name,
            r.n,
            r.k,
            r.tokens,
            r.density,
            r.ran,
            r.ms,
            r.cublas_ms,
            r.cublas_ms / r.ms.max(1e-9)
        ));
    }
    let ms: f64 = rows.iter().map(|r| r.ms).sum();
    let cublas: f64 = rows.iter().map(|r| r.cublas_ms).sum();
    s.push_str(&format!(
        "{:<46} {:>5} {:>5} {:>6} {:>7} {:<12} {:>9.4} {:>9.4} {:>6.2}x\n",
        "total",
        "",
        "",
        "",
        "",
        "",
        ms,
        cublas,
        cublas / ms.max(1e-9)
    ));
    s
}

/// `len` f16 values uniform in [-1, 1) from a fixed seed, on the device (timing on constant
/// data can run faster than on real inputs).
fn random_f16(rt: &CudaRuntime, len: usize) -> Result<DevBuf, CudaError> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let bits: Vec<u16> = (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            half::f16::from_f32(2.0 * u - 1.0).to_bits()
        })
        .collect();
    rt.upload(&bits)
}

impl CudaEncoder {
    /// Runs `batch` once (so that every dispatch decision is made), then times each projection
    /// at the batch's token count (the pooler and classifier at its sentence count) as it runs
    /// in the forward pass, and cuBLAS on a dense matrix of the same shape.
    pub fn report(&self, batch: &TokenBatch) -> Result<Vec<ProjectionReport>, RuntimeError> {
        self.embed_with(batch, crate::runtime::Pooling::Mean, false)?;
        let tokens = batch.total_tokens();
        let seqs = batch.len();
        let w = &self.weights;
        let heads: Vec<&Proj> = w.pooler.iter().chain(w.classifier.iter()).collect();
        let mut rows = Vec::new();
        for p in w.projections() {
            let m = if heads.iter().any(|h| std::ptr::eq(*h, p)) {
                seqs
            } else {
                tokens
            };
            rows.push(self.report_one(p, m)?);
        }
        Ok(rows)
    }

    fn report_one(&self, p: &Proj, m: usize) -> Result<ProjectionReport, RuntimeError> {
        let rt = &*self.rt;
        let x = random_f16(rt, m * p.k)?;
        let y = rt.alloc(m * p.n * 2)?;
        let fuse = Fuse {
            bias: true,
            ..Fuse::default()
        };
        let mut scratch = Scratch::default();
        let entry = self.dispatcher.decide(rt, &p.name, &p.weight, m)?;
        let ms = median_ms(rt, 5, 10, || {
            project(rt, &self.dispatcher, p, &x, m, &y, fuse, &mut scratch).map(|_| ())
        })?;
        let owned;
        let dense = match p.weight {
            LinearWeight::Dense {
                w,
                elem: ElemType::F16,
                ..
            } => w,
            LinearWeight::Tile(v) if !v.has_element_bitmaps && v.elem == ElemType::F16 => {
                owned = densify(rt, &v)?;
                owned.ptr()
            }
            _ => {
                owned = random_f16(rt, p.n * p.k)?;
                owned.ptr()
            }
        };
        // SAFETY: x holds m x K and y m x N f16 values, dense N x K (all allocated above or the
        // model's dense f16 weight), on this runtime's device.
        let cublas_ms = median_ms(rt, 5, 10, || unsafe {
            dense_gemm(rt, ElemType::F16, x.ptr(), p.k, m, p.k, dense, p.n, y.ptr())
        })?;
        let ran = match (entry.choice, entry.kernel) {
            (Choice::Tile, Some(k)) => format!("tile {k:?}"),
            _ => format!("cublas ({})", encoding(&p.weight)),
        };
        let density = self
            .weights
            .model
            .tensor(&p.name)
            .map_or(1.0, |t| t.density);
        Ok(ProjectionReport {
            name: p.name.clone(),
            n: p.n,
            k: p.k,
            tokens: m,
            density,
            ran,
            reason: entry.reason,
            ms,
            cublas_ms,
        })
    }
}

fn encoding(w: &LinearWeight) -> &'static str {
    match w {
        LinearWeight::Tile(_) => "tile",
        LinearWeight::Dense { .. } => "dense",
        LinearWeight::Rows { .. } => "rows",
        LinearWeight::Cols { .. } => "cols",
    }
}
