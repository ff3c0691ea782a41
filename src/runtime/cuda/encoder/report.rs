//! Per-projection report: what ran for each weight at a batch's token count, its time, and
//! cuBLAS's time on a dense matrix of the same shape (`et-run --report`).

use crate::runtime::cuda::device::addr;
use crate::runtime::cuda::dispatch::timing_activations;
use crate::runtime::cuda::gemm::{dense_gemm, densify};
use crate::runtime::cuda::{median_ms, Choice, ElemType, LinearWeight, Scratch};
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
    /// Milliseconds of the projection as it runs in the forward pass (epilogue included); Q, K
    /// and V that run there as one batched GEMM (`ran` says so) are timed here one at a time.
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
        // Q, K and V that run as one batched GEMM at this token count (on dense weights or on
        // the dispatcher's dense copies of tile weights).
        let mut batched: Vec<&Proj> = Vec::new();
        for (li, l) in w.layers.iter().enumerate() {
            if self.qkv_batched_weights(li, tokens)?.is_some() {
                batched.extend(l.qkv.iter().flatten());
            }
        }
        for p in w.projections() {
            let m = if heads.iter().any(|h| std::ptr::eq(*h, p)) {
                seqs
            } else {
                tokens
            };
            let mut row = self.report_one(p, m)?;
            if batched.iter().any(|b| std::ptr::eq(*b, p)) {
                if row.ran.starts_with("tile ") {
                    // The dispatcher chose a tile kernel; the layer measured the batch faster.
                    row.reason = format!("{}; batched Q/K/V measured faster", row.reason);
                }
                row.ran = format!("cublas ({}, batched Q/K/V)", encoding(&p.weight));
            }
            rows.push(row);
        }
        Ok(rows)
    }

    fn report_one(&self, p: &Proj, m: usize) -> Result<ProjectionReport, RuntimeError> {
        let rt = &*self.rt;
        let x = timing_activations(rt, m * p.k)?;
        let mut y = rt.alloc::<u16>(m * p.n)?;
        let fuse = Fuse {
            bias: true,
            ..Fuse::default()
        };
        let mut scratch = Scratch::default();
        let model = &self.weights.model;
        // SAFETY: the weight points into the model's upload (or a copy owned by `p`), alive
        // while the encoder is.
        let entry = unsafe { self.dispatcher.decide(rt, &p.name, &p.weight, m)? };
        let ms = median_ms(rt, 5, 10, || {
            project(
                rt,
                &self.dispatcher,
                model,
                p,
                &x,
                m,
                &mut y,
                fuse,
                &mut scratch,
            )
            .map(|_| ())
        })?;
        let owned;
        let dense = match p.weight {
            LinearWeight::Dense {
                w,
                elem: ElemType::F16,
                ..
            } => w,
            LinearWeight::Tile(v) if !v.has_element_bitmaps && v.elem == ElemType::F16 => {
                // SAFETY: as above.
                owned = unsafe { densify(rt, &v)? };
                addr(&owned)
            }
            _ => {
                owned = timing_activations(rt, p.n * p.k)?;
                addr(&owned)
            }
        };
        let (x, mut y) = (x.as_view(), y.as_view_mut());
        // SAFETY: dense holds N x K f16 values (allocated above or the model's dense f16
        // weight), alive for the calls; X and Y are checked.
        let cublas_ms = median_ms(rt, 5, 10, || unsafe {
            dense_gemm(rt, ElemType::F16, &x, p.k, m, p.k, dense, p.n, &mut y)
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
