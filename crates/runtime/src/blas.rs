//! cuBLASLt: one handle, and one prepared matmul per `Step::Gemm`.
//!
//! A [`GemmPlan`] owns its descriptors (matmul desc with transposes,
//! epilogue and bias pointer; layouts of A, B and C = D) and its algorithm,
//! chosen once at load time: the artifact's recorded `cublasLtMatmulAlgo_t`
//! words (validated with `cublasLtMatmulAlgoCheck`), else cuBLASLt's top
//! heuristic within the workspace limit, told how A, B and D are really
//! aligned (cuBLASLt assumes 256 bytes unless told; operands at an offset,
//! such as one head of decomposed attention, may be less). Running it is one `cublasLtMatmul`
//! with `alpha = 1` and `beta = 0`, `C = D`, or `beta = 1` with the step's
//! C (a residual) — capturable into a CUDA graph.
//! Every raw handle is freed on drop; errors there are ignored.
//!
//! fp8 GEMMs (checked by `plan::check_step`: e4m3 A and B, TN, a bf16, f16
//! or f32 D) get A and B layouts in `CUDA_R_8F_E4M3`, C and D layouts in
//! D's type, and the dequantization scales as cuBLASLt's A and B scale
//! pointers (device addresses, like the bias pointer); outer-vector scales
//! also set both scale modes to `OUTER_VEC_32F`. Compute stays f32.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use fluxc_artifact::{ElemType, Gemm, GemmEpilogue, ScaleMode};

use crate::plan::scale_mode_text;
use crate::RuntimeError;

/// The cuBLASLt handle.
#[derive(Debug)]
pub(crate) struct BlasHandle {
    raw: sys::cublasLtHandle_t,
}

impl BlasHandle {
    /// Creates a handle (the CUDA context must be current).
    pub fn new() -> Result<Self, RuntimeError> {
        let raw =
            lt::create_handle().map_err(RuntimeError::cublas("creating the cuBLASLt handle"))?;
        Ok(BlasHandle { raw })
    }

    /// The raw handle, for the cuBLASLt calls of `gemm_algo`.
    pub(crate) fn raw(&self) -> sys::cublasLtHandle_t {
        self.raw
    }
}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.raw) };
    }
}

/// A matmul descriptor.
#[derive(Debug)]
struct MatmulDesc {
    raw: sys::cublasLtMatmulDesc_t,
}

impl MatmulDesc {
    fn new() -> Result<Self, lt::CublasError> {
        let raw = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )?;
        Ok(MatmulDesc { raw })
    }

    /// Sets attribute `attr` to `value` (passed by address and size).
    fn set<T>(
        &self,
        attr: sys::cublasLtMatmulDescAttributes_t,
        value: &T,
    ) -> Result<(), lt::CublasError> {
        // SAFETY: the descriptor is alive; `value` is valid for `size_of::<T>()` bytes.
        unsafe {
            lt::set_matmul_desc_attribute(
                self.raw,
                attr,
                (value as *const T).cast(),
                size_of::<T>(),
            )
        }
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.raw) };
    }
}

/// A matrix layout.
#[derive(Debug)]
struct MatrixLayout {
    raw: sys::cublasLtMatrixLayout_t,
}

impl MatrixLayout {
    fn new(
        dtype: sys::cudaDataType,
        rows: u64,
        cols: u64,
        ld: u64,
    ) -> Result<Self, lt::CublasError> {
        let ld = i64::try_from(ld)
            .map_err(|_| lt::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE))?;
        let raw = lt::create_matrix_layout(dtype, rows, cols, ld)?;
        Ok(MatrixLayout { raw })
    }
}

impl Drop for MatrixLayout {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.raw) };
    }
}

/// A heuristic-search preference.
#[derive(Debug)]
struct MatmulPref {
    raw: sys::cublasLtMatmulPreference_t,
}

impl MatmulPref {
    /// At most `bytes` of workspace, for operands aligned to `alignment`
    /// bytes (A, B, C and D).
    fn new(bytes: usize, alignment: Alignment) -> Result<Self, lt::CublasError> {
        type P = sys::cublasLtMatmulPreferenceAttributes_t;
        let pref = MatmulPref {
            raw: lt::create_matmul_pref()?,
        };
        let bytes = bytes as u64;
        // SAFETY: the preference is alive; the attribute is a uint64_t.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.raw,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&bytes as *const u64).cast(),
                size_of::<u64>(),
            )
        }?;
        for (attribute, value) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment.a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment.b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment.c),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment.d),
        ] {
            // SAFETY: the preference is alive; the attribute is a uint32_t.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref.raw,
                    attribute,
                    (&value as *const u32).cast(),
                    size_of::<u32>(),
                )
            }?;
        }
        Ok(pref)
    }
}

/// The alignment, in bytes, of a GEMM's operands as cuBLASLt's heuristic
/// takes it: the largest power of two dividing the address, at most 256
/// (cuBLASLt's default assumption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alignment {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

impl Alignment {
    fn of(addrs: &GemmAddrs) -> Alignment {
        let bytes = |address: u64| -> u32 {
            if address == 0 {
                256
            } else {
                1u32 << address.trailing_zeros().min(8)
            }
        };
        Alignment {
            a: bytes(addrs.a),
            b: bytes(addrs.b),
            c: bytes(addrs.c.unwrap_or(addrs.d)),
            d: bytes(addrs.d),
        }
    }
}

impl Drop for MatmulPref {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.raw) };
    }
}

/// cuBLASLt's type of matrices of `dtype`.
fn cuda_type(dtype: ElemType) -> Option<sys::cudaDataType> {
    match dtype {
        ElemType::F32 => Some(sys::cudaDataType_t::CUDA_R_32F),
        ElemType::Bf16 => Some(sys::cudaDataType_t::CUDA_R_16BF),
        ElemType::F16 => Some(sys::cudaDataType_t::CUDA_R_16F),
        ElemType::F8e4m3 => Some(sys::cudaDataType_t::CUDA_R_8F_E4M3),
        ElemType::F8e5m2 => Some(sys::cudaDataType_t::CUDA_R_8F_E5M2),
        ElemType::I32 | ElemType::I64 => None,
    }
}

/// The types that select a GEMM's algorithms (`cublasLtMatmulAlgoGetIds`,
/// `cublasLtMatmulAlgoInit`): f32 compute and scale, A and B in the GEMM's
/// element type, C and D in D's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MatmulTypes {
    /// The compute type.
    pub compute: sys::cublasComputeType_t,
    /// The type of alpha and beta.
    pub scale: sys::cudaDataType,
    /// A's and B's type.
    pub ab: sys::cudaDataType,
    /// C's and D's type.
    pub cd: sys::cudaDataType,
}

/// The [`MatmulTypes`] of `g`, as [`GemmPlan::new`] builds its descriptors.
pub(crate) fn matmul_types(g: &Gemm) -> Result<MatmulTypes, String> {
    let ab = cuda_type(g.dtype).ok_or_else(|| format!("{:?} GEMMs are not supported", g.dtype))?;
    let d_elem = g.d_type();
    let cd = cuda_type(d_elem).ok_or_else(|| format!("a {d_elem:?} D is not supported"))?;
    Ok(MatmulTypes {
        compute: sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        scale: sys::cudaDataType_t::CUDA_R_32F,
        ab,
        cd,
    })
}

/// The value of the `CUBLASLT_MATMUL_DESC_{A,B}_SCALE_MODE` attributes
/// (an `int32_t` holding a `cublasLtMatmulMatrixScale_t`) for `mode`.
fn scale_mode_value(mode: ScaleMode) -> i32 {
    type S = sys::cublasLtMatmulMatrixScale_t;
    let value = match mode {
        ScaleMode::Tensor => S::CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F,
        ScaleMode::OuterVector => S::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
    };
    value as i32
}

/// The device addresses a GEMM reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmAddrs {
    /// A.
    pub a: u64,
    /// B.
    pub b: u64,
    /// D (and C when the GEMM has none of its own).
    pub d: u64,
    /// C, added with β = 1.
    pub c: Option<u64>,
    /// The bias and its element type, for the bias epilogues.
    pub bias: Option<(u64, ElemType)>,
    /// A's and B's dequantization scales (f32), for fp8 GEMMs.
    pub scales: Option<(u64, u64)>,
}

/// Sets A's and B's scale pointers (and, for outer-vector scales, both
/// scale modes) of an fp8 GEMM. `g.scales` and `scales` are both present or
/// both absent.
fn set_scales(desc: &MatmulDesc, g: &Gemm, scales: Option<(u64, u64)>) -> Result<(), String> {
    type A = sys::cublasLtMatmulDescAttributes_t;
    let st = |what: &'static str| move |e: lt::CublasError| format!("{what}: {e}");
    let (mode, (a, b)) = match (g.scales, scales) {
        (None, None) => return Ok(()),
        (Some(s), Some(ptrs)) => (s.mode, ptrs),
        _ => return Err("the GEMM's scales and their addresses disagree".into()),
    };
    // The pointer attributes hold a `const void*`: the device address, by value.
    desc.set(A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a)
        .map_err(st("setting A's scale pointer"))?;
    desc.set(A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b)
        .map_err(st("setting B's scale pointer"))?;
    if mode != ScaleMode::Tensor {
        let value = scale_mode_value(mode);
        desc.set(A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &value)
            .map_err(st("setting A's scale mode"))?;
        desc.set(A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &value)
            .map_err(st("setting B's scale mode"))?;
    }
    Ok(())
}

/// One prepared matmul.
#[derive(Debug)]
pub(crate) struct GemmPlan {
    desc: MatmulDesc,
    a_layout: MatrixLayout,
    b_layout: MatrixLayout,
    d_layout: MatrixLayout,
    algo: sys::cublasLtMatmulAlgo_t,
    addrs: GemmAddrs,
    alpha: f32,
    beta: f32,
    /// The step asks for fast fp8 accumulation, but cuBLASLt had no
    /// algorithm with it: the plan accumulates as usual.
    pub standard_accumulation: bool,
}

/// The descriptors of one matmul: operation and the three layouts.
#[derive(Debug)]
struct Descriptors {
    desc: MatmulDesc,
    a_layout: MatrixLayout,
    b_layout: MatrixLayout,
    d_layout: MatrixLayout,
    /// What kind of GEMM this is, for error messages (empty for plain ones).
    kind: String,
    /// How A, B and D are aligned.
    alignment: Alignment,
}

impl Descriptors {
    /// The descriptors of `g` (already checked by `plan::check_step`) over
    /// `addrs`.
    fn new(g: &Gemm, addrs: GemmAddrs) -> Result<Self, String> {
        let ab_type =
            cuda_type(g.dtype).ok_or_else(|| format!("{:?} GEMMs are not supported", g.dtype))?;
        let d_elem = g.d_type();
        let d_type = cuda_type(d_elem).ok_or_else(|| format!("a {d_elem:?} D is not supported"))?;
        let st = |what: &'static str| move |e: lt::CublasError| format!("{what}: {e}");
        let desc = MatmulDesc::new().map_err(st("creating the matmul descriptor"))?;
        type A = sys::cublasLtMatmulDescAttributes_t;
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (an int32).
        let op = |t: bool| -> i32 { i32::from(t) };
        desc.set(A::CUBLASLT_MATMUL_DESC_TRANSA, &op(g.trans_a))
            .map_err(st("setting TRANSA"))?;
        desc.set(A::CUBLASLT_MATMUL_DESC_TRANSB, &op(g.trans_b))
            .map_err(st("setting TRANSB"))?;
        let epilogue = match g.epilogue {
            GemmEpilogue::Default => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            GemmEpilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            GemmEpilogue::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        desc.set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)
            .map_err(st("setting the epilogue"))?;
        if let Some((ptr, bias_type)) = addrs.bias {
            let bias_type = cuda_type(bias_type).ok_or("unsupported bias type")?;
            desc.set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr)
                .map_err(st("setting the bias pointer"))?;
            desc.set(A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type)
                .map_err(st("setting the bias type"))?;
        }
        set_scales(&desc, g, addrs.scales)?;
        if g.fast_accumulation {
            // An int8_t: 1 promotes fp8 partial sums to f32 less often.
            desc.set(A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &1i8)
                .map_err(st("setting fast accumulation"))?;
        }
        let (a_rows, a_cols) = g.a_dims();
        let (b_rows, b_cols) = g.b_dims();
        let a_layout =
            MatrixLayout::new(ab_type, a_rows, a_cols, g.lda).map_err(st("creating A's layout"))?;
        let b_layout =
            MatrixLayout::new(ab_type, b_rows, b_cols, g.ldb).map_err(st("creating B's layout"))?;
        let d_layout =
            MatrixLayout::new(d_type, g.m, g.n, g.ldd).map_err(st("creating D's layout"))?;
        // Says which kind of GEMM cuBLASLt turned down.
        let kind = match g.scales {
            Some(s) => format!(
                " for this {:?} → {d_elem:?} GEMM with {} scales",
                g.dtype,
                scale_mode_text(s.mode)
            ),
            None => String::new(),
        };
        Ok(Descriptors {
            desc,
            a_layout,
            b_layout,
            d_layout,
            kind,
            alignment: Alignment::of(&addrs),
        })
    }

    /// Up to `count` algorithms cuBLASLt's heuristic proposes within
    /// `workspace_limit` bytes of workspace, best first.
    fn heuristic(
        &self,
        handle: &BlasHandle,
        workspace_limit: usize,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, String> {
        let st = |what: &'static str| move |e: lt::CublasError| format!("{what}: {e}");
        let pref = MatmulPref::new(workspace_limit, self.alignment)
            .map_err(st("creating the preference"))?;
        let count = count.clamp(1, 64);
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = (0..count)
            // SAFETY: a plain C struct of integers and arrays; all-zero is valid.
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        let mut returned: i32 = 0;
        // SAFETY: every descriptor is alive; `results` holds `count`
        // entries and `returned` is valid for writes.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                handle.raw,
                self.desc.raw,
                self.a_layout.raw,
                self.b_layout.raw,
                self.d_layout.raw,
                self.d_layout.raw,
                pref.raw,
                count as i32,
                results.as_mut_ptr(),
                &mut returned,
            )
        };
        let what = if self.kind.is_empty() {
            " for it"
        } else {
            &self.kind
        };
        status
            .result()
            .map_err(|e| format!("cuBLASLt has no algorithm{what} (heuristic: {e})"))?;
        results.truncate(returned.max(0) as usize);
        results.retain(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        if results.is_empty() {
            return Err(format!("cuBLASLt has no algorithm{what}"));
        }
        Ok(results)
    }
}

impl Descriptors {
    /// Checks that the recorded algorithm `words` applies to these
    /// descriptors; returns it with the workspace it needs.
    fn check(
        &self,
        handle: &BlasHandle,
        words: [u64; 8],
    ) -> Result<(sys::cublasLtMatmulAlgo_t, usize), String> {
        let algo = sys::cublasLtMatmulAlgo_t { data: words };
        let mut result = std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::zeroed();
        // SAFETY: every descriptor is alive; `result` is valid for writes.
        unsafe {
            sys::cublasLtMatmulAlgoCheck(
                handle.raw,
                self.desc.raw,
                self.a_layout.raw,
                self.b_layout.raw,
                self.d_layout.raw,
                self.d_layout.raw,
                &algo,
                result.as_mut_ptr(),
            )
        }
        .result()
        .map_err(|e| {
            format!(
                "the recorded algorithm does not apply here{}: {e}",
                self.kind
            )
        })?;
        // SAFETY: written by the successful check.
        let result = unsafe { result.assume_init() };
        Ok((algo, result.workspaceSize))
    }
}

/// Up to `count` algorithms cuBLASLt's heuristic proposes for `g` over
/// `addrs`, best first, as the words [`Gemm::algo`] records: the candidates
/// GEMM tuning times.
pub(crate) fn heuristic_algos(
    handle: &BlasHandle,
    g: &Gemm,
    addrs: GemmAddrs,
    workspace_limit: usize,
    count: usize,
) -> Result<Vec<[u64; 8]>, String> {
    let d = Descriptors::new(g, addrs)?;
    Ok(d.heuristic(handle, workspace_limit, count)?
        .into_iter()
        .map(|r| r.algo.data)
        .collect())
}

impl GemmPlan {
    /// Builds the descriptors of `g` (already checked by
    /// `plan::check_step`) and picks its algorithm: the recorded one
    /// (checked), else cuBLASLt's top heuristic; errors are reasons, in
    /// words, for [`RuntimeError::Step`].
    ///
    /// Fast fp8 accumulation is a speed hint: where cuBLASLt's heuristic has
    /// no algorithm with it (on the H200, FLUX's 3072 × 256 × 12288 text
    /// projection with per-row scales), the plan accumulates as usual
    /// (more exactly, the same product) and says so in
    /// `standard_accumulation`.
    pub fn new(
        handle: &BlasHandle,
        g: &Gemm,
        addrs: GemmAddrs,
        workspace_limit: usize,
    ) -> Result<Self, String> {
        let d = Descriptors::new(g, addrs)?;
        let (d, algo, workspace_bytes, standard_accumulation) = match g.algo {
            Some(words) => {
                let (algo, bytes) = d.check(handle, words)?;
                (d, algo, bytes, false)
            }
            None => match d.heuristic(handle, workspace_limit, 1) {
                Ok(best) => (d, best[0].algo, best[0].workspaceSize, false),
                Err(fast) if g.fast_accumulation => {
                    let standard = Gemm {
                        fast_accumulation: false,
                        ..g.clone()
                    };
                    let d = Descriptors::new(&standard, addrs)?;
                    let best = d
                        .heuristic(handle, workspace_limit, 1)
                        .map_err(|e| format!("{fast}; without fast accumulation: {e}"))?[0];
                    (d, best.algo, best.workspaceSize, true)
                }
                Err(e) => return Err(e),
            },
        };
        if workspace_bytes > workspace_limit {
            return Err(format!(
                "its algorithm needs {workspace_bytes} bytes of workspace, the schedule provides {workspace_limit}"
            ));
        }
        Ok(GemmPlan {
            desc: d.desc,
            a_layout: d.a_layout,
            b_layout: d.b_layout,
            d_layout: d.d_layout,
            algo,
            addrs,
            alpha: 1.0,
            beta: if addrs.c.is_some() { 1.0 } else { 0.0 },
            standard_accumulation,
        })
    }

    /// Enqueues the matmul on `stream`.
    ///
    /// # Safety
    /// The addresses must be live device memory of the sizes the layouts
    /// describe, `workspace` must hold `workspace_size` bytes, and `stream`
    /// must belong to the context the handle was created in.
    pub unsafe fn enqueue(
        &self,
        handle: &BlasHandle,
        workspace: u64,
        workspace_size: usize,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), lt::CublasError> {
        let ptr = |a: u64| a as *mut c_void;
        lt::matmul(
            handle.raw,
            self.desc.raw,
            (&self.alpha as *const f32).cast(),
            (&self.beta as *const f32).cast(),
            ptr(self.addrs.a),
            self.a_layout.raw,
            ptr(self.addrs.b),
            self.b_layout.raw,
            ptr(self.addrs.c.unwrap_or(self.addrs.d)),
            self.d_layout.raw,
            ptr(self.addrs.d),
            self.d_layout.raw,
            &self.algo,
            ptr(workspace),
            workspace_size,
            stream as sys::cudaStream_t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_types_and_scale_modes_map_to_cublaslt() {
        assert_eq!(
            cuda_type(ElemType::F8e4m3),
            Some(sys::cudaDataType_t::CUDA_R_8F_E4M3)
        );
        assert_eq!(cuda_type(ElemType::I32), None);
        // cublasLt.h: SCALAR_32F = 0, OUTER_VEC_32F = 3.
        assert_eq!(scale_mode_value(ScaleMode::Tensor), 0);
        assert_eq!(scale_mode_value(ScaleMode::OuterVector), 3);
    }

    #[test]
    fn alignment_is_the_address_power_of_two_up_to_256() {
        let addrs = GemmAddrs {
            a: 0x7f00_0000_0000,
            b: 0x7f00_0000_0000 + 64,
            d: 0x7f00_0000_0000 + 1444,
            c: None,
            bias: None,
            scales: None,
        };
        assert_eq!(
            Alignment::of(&addrs),
            Alignment {
                a: 256,
                b: 64,
                c: 4,
                d: 4
            }
        );
        // A C of its own has its own alignment.
        let with_c = GemmAddrs {
            c: Some(0x7f00_0000_0000 + 32),
            ..addrs
        };
        assert_eq!(Alignment::of(&with_c).c, 32);
    }
}
