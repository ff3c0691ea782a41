//! Dense products through cuBLASLt with the bias and the residual inside the GEMM's epilogue:
//! `Y = X W^T + b + R` in one kernel, where cuBLAS plus a separate epilogue pass reads and writes
//! Y a second time.
//!
//! The residual enters as cuBLASLt's `C` matrix with `beta = 1` (C and D are distinct buffers);
//! the f32 bias is broadcast over the tokens. GELU is not fused here: cuBLASLt's GELU is the tanh
//! approximation, while the models use erf. A shape that cuBLASLt has no algorithm for reports
//! `None`, and the caller falls back to cuBLAS with the epilogue kernel.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Mutex;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr};

use super::device::{addr, ElemType};
use super::error::CudaError;

/// Workspace offered to cuBLASLt's algorithms (what NVIDIA recommends for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// Plans kept at most; past this the cache starts over (token counts vary batch to batch).
const MAX_PLANS: usize = 512;

/// What identifies a plan: element type, M, N, K, X's pitch, bias present, residual present, and
/// the alignments (bytes, at most 256) of W, X, the residual (or Y) and Y.
type Key = (ElemType, usize, usize, usize, usize, bool, bool, [u32; 4]);

/// The largest power of two up to 256 that divides `a`: the alignment cuBLASLt may assume.
fn alignment(a: u64) -> u32 {
    if a == 0 {
        256
    } else {
        1u32 << a.trailing_zeros().min(8)
    }
}

/// One product's descriptors and the algorithm cuBLASLt's heuristic chose for it.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created by this plan and are destroyed once; failures
        // here leak a few bytes of host memory and are ignored.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt handle, its workspace and the plans made so far (`None`: no algorithm).
pub(crate) struct CublasLt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Option<Plan>>>,
}

// SAFETY: the handle is used only under the plans' mutex, on the runtime's one stream; cuBLASLt
// handles may be used from any thread when calls do not overlap.
unsafe impl Send for CublasLt {}
// SAFETY: as above; every use of the handle and the plans holds the mutex.
unsafe impl Sync for CublasLt {}

impl Drop for CublasLt {
    fn drop(&mut self) {
        if let Ok(p) = self.plans.get_mut() {
            p.clear();
        }
        // SAFETY: created in `new`, destroyed once, after its plans.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn data_type(elem: ElemType) -> sys::cudaDataType {
    match elem {
        ElemType::F16 => sys::cudaDataType::CUDA_R_16F,
        ElemType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

fn err(context: &str) -> impl FnOnce(lt::CublasError) -> CudaError + '_ {
    move |e| CudaError::Invalid(format!("cuBLASLt error in {context}: {e}"))
}

impl CublasLt {
    /// Creates the handle and its workspace on `stream`'s device.
    pub(crate) fn new(stream: &std::sync::Arc<CudaStream>) -> Result<CublasLt, CudaError> {
        let handle = lt::create_handle().map_err(err("cublasLtCreate"))?;
        // SAFETY: the workspace is only ever handed to cuBLASLt, which writes before it reads.
        let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above and not used since.
                unsafe {
                    let _ = lt::destroy_handle(handle);
                }
                return Err(CudaError::driver("allocating the cuBLASLt workspace")(e));
            }
        };
        Ok(CublasLt {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the plan of `key`, or `None` when cuBLASLt has no algorithm for it.
    fn plan(&self, key: Key) -> Result<Option<Plan>, CudaError> {
        let (elem, m, n, k, ldx, bias, _, aligns) = key;
        let t = data_type(elem);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(err("creating a matmul descriptor"))?;
        // Column-major view of the row-major product: D^T[N,M] = op(A)[N,K] B[K,M] with A the
        // stored W (K x N, transposed) and B the stored X (K x M, pitch ldx).
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: a plain C struct of integers; overwritten by the heuristic's choice.
            algo: unsafe { std::mem::zeroed() },
        };
        let dims = [(k, n, k), (k, m, ldx), (n, m, n)];
        for (slot, (rows, cols, ld)) in plan.layouts.iter_mut().zip(dims) {
            *slot = lt::create_matrix_layout(t, rows as u64, cols as u64, ld as i64)
                .map_err(err("creating a matrix layout"))?;
        }
        let set = |attr, v: *const c_void, size| {
            // SAFETY: `v` points at `size` bytes of the attribute's type, alive for the call.
            unsafe { lt::set_matmul_desc_attribute(plan.desc, attr, v, size) }
                .map_err(err("setting a matmul attribute"))
        };
        let trans_a: i32 = 1;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &trans_a as *const i32 as *const c_void,
            size_of::<i32>(),
        )?;
        if bias {
            let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as *const c_void,
                size_of::<sys::cublasLtEpilogue_t>(),
            )?;
            let bias_type = sys::cudaDataType::CUDA_R_32F;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bias_type as *const _ as *const c_void,
                size_of::<sys::cudaDataType>(),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(err("creating a preference"))?;
        let ws = WORKSPACE_BYTES;
        // SAFETY: `ws` is a usize, the attribute's type; the preference is destroyed below.
        let found = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                size_of::<usize>(),
            )
            .and_then(|()| {
                use sys::cublasLtMatmulPreferenceAttributes_t as P;
                let attrs = [
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ];
                for (attr, a) in attrs.into_iter().zip(&aligns) {
                    lt::set_matmul_pref_attribute(
                        pref,
                        attr,
                        a as *const u32 as *const c_void,
                        size_of::<u32>(),
                    )?;
                }
                let [a, b, d] = plan.layouts;
                lt::get_matmul_algo_heuristic(self.handle, plan.desc, a, b, d, d, pref)
            })
        };
        // SAFETY: created above, not used after.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        match found {
            Ok(h) => {
                plan.algo = h.algo;
                Ok(Some(plan))
            }
            Err(_) => Ok(None),
        }
    }

    /// Enqueues `Y[M,N] = X[M,K] W[N,K]^T (+ bias) (+ residual)` on `stream`. Returns `false`,
    /// having enqueued nothing, when cuBLASLt has no algorithm for the shape.
    ///
    /// # Safety
    /// `w` is the address of `n x k` values of `elem` on the stream's device, alive until the
    /// stream's work is done; X holds `(m - 1) * ldx + k` values, Y `m * n`, the bias `n` and the
    /// residual `m * n` (the caller checked them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul(
        &self,
        stream: &CudaStream,
        elem: ElemType,
        (m, n, k, ldx): (usize, usize, usize, usize),
        x: &CudaView<'_, u16>,
        w: u64,
        bias: Option<&CudaView<'_, f32>>,
        residual: Option<&CudaView<'_, u16>>,
        y: &mut CudaViewMut<'_, u16>,
    ) -> Result<bool, CudaError> {
        if bias.is_some_and(|b| addr(b) % 16 != 0) {
            return Ok(false);
        }
        let yp = addr(y);
        let cp = residual.map_or(yp, addr);
        let aligns = [
            alignment(w),
            alignment(addr(x)),
            alignment(cp),
            alignment(yp),
        ];
        let key = (
            elem,
            m,
            n,
            k,
            ldx,
            bias.is_some(),
            residual.is_some(),
            aligns,
        );
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| CudaError::Invalid("cuBLASLt plan cache poisoned".into()))?;
        if !plans.contains_key(&key) {
            if plans.len() >= MAX_PLANS {
                plans.clear();
            }
            let p = self.plan(key)?;
            plans.insert(key, p);
        }
        let Some(plan) = plans.get(&key).and_then(|p| p.as_ref()) else {
            return Ok(false);
        };
        if let Some(b) = bias {
            let p = addr(b);
            // SAFETY: the attribute is a device pointer, read by value during the call.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &p as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
            }
            .map_err(err("setting the bias pointer"))?;
        }
        let (alpha, beta) = (1.0f32, if residual.is_some() { 1.0f32 } else { 0.0 });
        let (ws, _guard) = self.workspace.device_ptr(stream);
        let [a, b, d] = plan.layouts;
        // SAFETY: the caller's contract for X, W, Y, the bias and the residual; the layouts
        // describe exactly those shapes; the workspace is this handle's, of WORKSPACE_BYTES.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                a,
                addr(x) as *const c_void,
                b,
                cp as *const c_void,
                d,
                yp as *mut c_void,
                d,
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(err("cublasLtMatmul"))?;
        Ok(true)
    }
}
