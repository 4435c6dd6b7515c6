//! The row softmax of decomposed attention: `p = softmax(scale · s)` over
//! each row of a score matrix, in place.
//!
//! One CTA per row (grid: rows × score matrices, one matrix per batch and
//! head, each starting on a 256-byte boundary so that cuBLASLt sees aligned
//! operands). The scores are stored in the model's dtype (never f32:
//! at 16384 tokens a bf16 score matrix is already 512 MiB); all arithmetic
//! is f32. The first pass reads the row once with an online max and sum
//! per thread (the sum rescaled whenever the max grows), the CTA combines
//! them, and the second pass reads the row again (from L2: a 16384-wide
//! bf16 row is 32 KiB) and writes `exp(scale·s − max) / sum` over it. The
//! kernel takes the scores and the probabilities as two pointers, without
//! `__restrict__`: the schedule passes the same buffer for both, and every
//! element is read before the thread that reads it writes it.

use fluxc_ir::{DType, Graph, NodeId};

use crate::buffers::{Buf, Temp};
use crate::emit::{float_literal, Param};
use crate::kernels::{
    c_type, check_block, KernelSource, LaunchConfig, Recipe, BLOCK_THREADS, NAME,
};
use crate::CodegenError;

/// What one softmax kernel computes.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxPlan {
    /// The attention it serves (for its name).
    pub node: NodeId,
    /// The score matrices, overwritten by the probabilities.
    pub scores: Temp,
    /// Score matrices (batch × heads).
    pub matrices: usize,
    /// Elements from one matrix to the next (at least `rows · cols`).
    pub stride: usize,
    /// Rows of each (queries).
    pub rows: usize,
    /// Columns (keys).
    pub cols: usize,
    /// Multiplies the scores before the softmax.
    pub scale: f32,
}

/// The kernel of `plan` in blocks of `config`'s threads (256 by default).
pub fn scaled_softmax(
    _graph: &Graph,
    plan: &SoftmaxPlan,
    config: Option<LaunchConfig>,
) -> Result<KernelSource, CodegenError> {
    let threads = config.map_or(BLOCK_THREADS, |c| c.block_threads);
    check_block(threads)?;
    let dtype = plan.scores.dtype;
    let ty = c_type(dtype)?;
    let cols = plan.cols;
    let w = match dtype {
        DType::BF16 | DType::F16 if cols % 8 == 0 => 8,
        DType::F32 if cols % 4 == 0 => 4,
        _ => 1,
    };
    let grid = |v: usize, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|&v| v <= 65535 || what == "rows")
            .ok_or_else(|| CodegenError::TooLarge(format!("a softmax over {v} {what}")))
    };
    let (rows, matrices) = (
        grid(plan.rows, "rows")?,
        grid(plan.matrices, "score matrices")?,
    );
    let stride = plan.stride;
    if i32::try_from(cols).is_err() || plan.scores.elements > i64::MAX as u64 {
        return Err(CodegenError::TooLarge(format!(
            "a softmax over rows of {cols} scores"
        )));
    }
    let scale = float_literal(plan.scale);
    let source = format!(
        r#"extern "C" __global__ void __launch_bounds__({threads}) {NAME}(const {ty}* p0, {ty}* p1) {{
    __shared__ float fx_scratch[{warps}];
    const long long row = (long long)blockIdx.y * {stride} + (long long)blockIdx.x * {cols};
    const {ty}* x = p0 + row;
    {ty}* y = p1 + row;
    float mx = -__int_as_float(0x7f800000);
    float sum = 0.0f;
    for (int c0 = threadIdx.x * {w}; c0 < {cols}; c0 += {threads} * {w}) {{
        const auto r = fx_vload<{w}>(x, c0);
        #pragma unroll
        for (int v = 0; v < {w}; ++v) {{
            const float s = fx_vget<{w}>(r, v) * {scale};
            if (s > mx) {{
                sum = sum * expf(mx - s) + 1.0f;
                mx = s;
            }} else {{
                sum += expf(s - mx);
            }}
        }}
    }}
    const float row_max = fx_row_max(mx, {threads}, fx_scratch);
    const float total = fx_row_sum(sum * expf(mx - row_max), {threads}, fx_scratch);
    const float inv = 1.0f / total;
    for (int c0 = threadIdx.x * {w}; c0 < {cols}; c0 += {threads} * {w}) {{
        const auto r = fx_vload<{w}>(x, c0);
        float o[{w}];
        #pragma unroll
        for (int v = 0; v < {w}; ++v) o[v] = expf(fx_vget<{w}>(r, v) * {scale} - row_max) * inv;
        fx_vstore<{w}>(y, c0, o);
    }}
}}
"#,
        warps = threads / 32,
    );
    Ok(KernelSource {
        source,
        params: vec![
            Param {
                buf: Buf::Temp(plan.scores),
                written: false,
                offset: 0,
            },
            Param {
                buf: Buf::Temp(plan.scores),
                written: true,
                offset: 0,
            },
        ],
        grid: [rows, matrices, 1],
        block: [threads, 1, 1],
        ops: vec!["attention_softmax"],
        scratch_words: 0,
        config: LaunchConfig {
            block_threads: threads,
            threads_per_row: 0,
        },
        recipe: Recipe::ScaledSoftmax(plan.clone()),
    })
}
