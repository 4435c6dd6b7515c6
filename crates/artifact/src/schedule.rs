//! `schedule.json`: the buffers of one forward at their planned offsets and
//! the ordered, typed steps that run it.
//!
//! Memory is two regions the runtime allocates once: the *arena* (every
//! activation, at offsets a liveness-based planner chose, so buffers whose
//! lifetimes do not overlap share bytes) and the *weights*. Steps name
//! buffers by id; the runtime turns `(buffer, byte offset)` into a device
//! address and never re-derives a decision the compiler made.

use serde::{Deserialize, Serialize};

/// Index of a buffer in [`Schedule::buffers`].
pub type BufferId = u32;

/// Element types of buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElemType {
    /// float32
    F32,
    /// bfloat16
    Bf16,
    /// float16
    F16,
    /// fp8 e4m3 (saturating at ±448)
    F8e4m3,
    /// fp8 e5m2
    F8e5m2,
    /// int32
    I32,
    /// int64
    I64,
}

impl ElemType {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::Bf16 | ElemType::F16 => 2,
            ElemType::F8e4m3 | ElemType::F8e5m2 => 1,
            ElemType::I64 => 8,
        }
    }
}

/// Which allocation a buffer lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Activations, inputs and outputs (offsets shared by liveness).
    Arena,
    /// Weights, loaded once.
    Weights,
    /// Kernel-private state (grid-reduction counters) that must be zero
    /// before the first run; the kernels that use it leave it zero again,
    /// so graph replays need no reset. Never shared between buffers.
    Scratch,
}

/// A dense row-major tensor at a fixed place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// Its index in [`Schedule::buffers`].
    pub id: BufferId,
    /// What it holds, for reports and debugging (`%12 layer_norm @blocks.0.norm1`).
    pub name: String,
    /// Element type.
    pub dtype: ElemType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// The allocation it lives in.
    pub region: Region,
    /// Byte offset from the region's base (a multiple of 256).
    pub offset: u64,
    /// Size in bytes (`elements × element size`).
    pub bytes: u64,
}

impl Buffer {
    /// A buffer of `shape` elements of `dtype` at `offset` in `region`, its
    /// size in bytes derived from them.
    pub fn new(
        id: BufferId,
        name: impl Into<String>,
        dtype: ElemType,
        shape: Vec<u64>,
        region: Region,
        offset: u64,
    ) -> Buffer {
        let bytes = shape.iter().product::<u64>() * dtype.size_bytes();
        Buffer {
            id,
            name: name.into(),
            dtype,
            shape,
            region,
            offset,
            bytes,
        }
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A device address: a buffer plus a byte offset into it (non-zero for views
/// such as the image half of a joint `[text, image]` sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tensor {
    /// The buffer.
    pub buffer: BufferId,
    /// Bytes into the buffer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Tensor {
    /// The start of `buffer`.
    pub fn of(buffer: BufferId) -> Tensor {
        Tensor { buffer, offset: 0 }
    }

    /// `bytes` further into the same buffer.
    pub fn plus(self, bytes: u64) -> Tensor {
        Tensor {
            offset: self.offset + bytes,
            ..self
        }
    }
}

/// A named graph input or output and the buffer that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The graph's name for it (`hidden_states`, `sample`).
    pub name: String,
    /// Its buffer.
    pub buffer: BufferId,
}

/// One kernel parameter, in declaration order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Arg {
    /// A device pointer (passed as a 64-bit address).
    Ptr(Tensor),
    /// A 32-bit signed integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
}

/// A launch of a generated kernel from `kernels.cu`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// The `extern "C"` kernel name.
    pub kernel: String,
    /// Grid size.
    pub grid: [u32; 3],
    /// Block size.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// Parameters, in order.
    pub args: Vec<Arg>,
}

/// What cuBLASLt applies after the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GemmEpilogue {
    /// Nothing.
    Default,
    /// `+ bias` (one value per row of the column-major D).
    Bias,
    /// `GELU(· + bias)` with the tanh approximation.
    GeluBias,
}

/// How the scales of an fp8 GEMM apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleMode {
    /// One f32 each for A and B.
    Tensor,
    /// One f32 per row of D for A (`m` values) and one per column of D for
    /// B (`n` values): fluxc's per-output-channel weight scales and
    /// per-token activation scales (cuBLASLt's `OUTER_VEC_32F`).
    OuterVector,
}

/// The scales of an fp8 GEMM: `D[i, j] = (op(A)·op(B))[i, j] · a[i] · b[j]`
/// (with `a[i] = a[0]`, `b[j] = b[0]` in [`ScaleMode::Tensor`]), applied
/// before the bias and the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmScales {
    /// How they apply.
    pub mode: ScaleMode,
    /// A's scales (f32).
    pub a: Tensor,
    /// B's scales (f32).
    pub b: Tensor,
}

/// One cuBLASLt matmul, described in cuBLAS's column-major terms so the
/// runtime replays it without reinterpreting anything:
/// `D (m×n) = epilogue(op(A) · op(B))`, f32 accumulation.
///
/// fluxc's row-major `y[rows, out] = x[rows, in] · W[out, in]ᵀ + b` is
/// `A = W` (transposed, `lda = in`), `B = x` (`ldb = in`), `m = out`,
/// `n = rows`, `k = in`, `D = y` (`ldd = out`), bias per row of D.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gemm {
    /// What it computes, for reports (`%512 linear @single_transformer_blocks.3`).
    pub name: String,
    /// Type of A and B, and of D unless [`Gemm::d_dtype`] says otherwise.
    pub dtype: ElemType,
    /// `op(A) = Aᵀ`.
    pub trans_a: bool,
    /// `op(B) = Bᵀ`.
    pub trans_b: bool,
    /// Rows of D.
    pub m: u64,
    /// Columns of D.
    pub n: u64,
    /// The reduced dimension.
    pub k: u64,
    /// A's address.
    pub a: Tensor,
    /// A's leading dimension.
    pub lda: u64,
    /// B's address.
    pub b: Tensor,
    /// B's leading dimension.
    pub ldb: u64,
    /// D's address.
    pub d: Tensor,
    /// D's leading dimension.
    pub ldd: u64,
    /// The bias (`m` values), required by the bias epilogues.
    pub bias: Option<Tensor>,
    /// What cuBLASLt applies after the product.
    pub epilogue: GemmEpilogue,
    /// Type of D when it differs from A and B (fp8 GEMMs write bf16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_dtype: Option<ElemType>,
    /// The dequantization scales of an fp8 GEMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<GemmScales>,
    /// Hopper's fast fp8 accumulation (cuBLASLt's `FAST_ACCUM`: partial
    /// sums are promoted to f32 less often), for fp8 GEMMs only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fast_accumulation: bool,
    /// The algorithm to run, as cuBLASLt's opaque `cublasLtMatmulAlgo_t`
    /// (eight 64-bit words), when the compiler chose one; `None` means the
    /// runtime takes cuBLASLt's top heuristic.
    pub algo: Option<[u64; 8]>,
    /// C, added to the product with β = 1 (cuBLASLt computes
    /// `D = α·op(A)·op(B) + β·C`, then the bias): a residual in D's type
    /// and layout (`ldd`); `None` is β = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<Tensor>,
}

impl Gemm {
    /// Rows and columns of A as stored (column-major): `op(A)` is `m × k`.
    pub fn a_dims(&self) -> (u64, u64) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// Rows and columns of B as stored (column-major): `op(B)` is `k × n`.
    pub fn b_dims(&self) -> (u64, u64) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// The element type of D.
    pub fn d_type(&self) -> ElemType {
        self.d_dtype.unwrap_or(self.dtype)
    }
}

/// How an attention kernel takes q, k and v.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionOperands {
    /// Three device pointers.
    Pointers,
    /// Three CUDA tensor maps (`CUtensorMap`, 128 bytes each, by value),
    /// which the runtime encodes: each operand `[batch, seq, heads, D]` as
    /// the bf16 4-D view `[D, heads, seq, batch]` (innermost first), box
    /// `[64, 1, rows, 1]`, 128-byte swizzle, out-of-bounds elements zero.
    TensorMaps {
        /// Box rows of q (the kernel's query tile).
        q_rows: u32,
        /// Box rows of k and v (the kernel's key tile).
        kv_rows: u32,
    },
    /// The fp8 kernel's three tensor maps, all over bytes (e4m3 loaded as
    /// `UINT8`), 128-byte swizzle, out-of-bounds elements zero: q and k as
    /// the 4-D view `[D, heads, seq, batch]` with boxes `[D, 1, q_rows, 1]`
    /// and `[D, 1, kv_rows, 1]`; and [`Attention::v`], which is then the V
    /// layout kernel's copy of v, `vt` (`[batch, heads, D, vt_keys]`, keys
    /// innermost, zero past `seq_kv`), as `[vt_keys, D, heads, batch]` with
    /// box `[vt_rows, D, 1, 1]`. The step's [`Attention::scales`] are
    /// required.
    Fp8TensorMaps {
        /// Box rows of q (the kernel's query tile).
        q_rows: u32,
        /// Box rows of k (the key tile).
        kv_rows: u32,
        /// The key extent of vt's box (at most 128: one 128-byte swizzle
        /// row; the kernel loads a key tile as `kv_rows / vt_rows` boxes).
        vt_rows: u32,
        /// Keys per row of vt: `seq_kv` rounded up to a multiple of 16 (so
        /// a row is a multiple of the 16 bytes TMA strides need).
        vt_keys: u32,
    },
}

/// The per-tensor dequantization scales of an fp8 attention (one f32
/// each): `x ≈ x8 · scale` for q, k and v.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionScales {
    /// q's scale.
    pub q: Tensor,
    /// k's scale.
    pub k: Tensor,
    /// v's scale.
    pub v: Tensor,
}

/// The entry points with which a tensor-map attention kernel
/// ([`AttentionOperands::TensorMaps`] or
/// [`AttentionOperands::Fp8TensorMaps`]) runs query tiles split over their
/// keys. The runtime uses them for the last, partial wave of query tiles
/// when splitting fills the GPU better; whether it does, and into how many
/// key segments, depends on the device's SM count, so it decides at load.
/// For `tiles` query tiles from `q_tile_base` on, each split into
/// `kv_splits` segments (at most the number of key tiles):
///
/// - `part_kernel(q, k, v, float* part, seq_q, seq_kv, heads, scale,
///   q_tile_base, kv_splits)` (an fp8 kernel's: its three scale pointers
///   after `part`), with the attention's block and shared
///   memory, on the grid `(tiles · kv_splits, heads, batch)`: CTA `x` runs
///   query tile `q_tile_base + x / kv_splits` against the `x % kv_splits`-th
///   of `kv_splits` near-equal ranges of key tiles and writes `part_floats`
///   f32 (unnormalized O, row maxima, row sums) at its linear index in the
///   grid, `x` fastest;
/// - `merge_kernel(const float* part, out, seq_q, heads, q_tile_base,
///   kv_splits)`, on the grid `(tiles · q_rows / SPLIT_MERGE_ROWS, heads,
///   batch)` of `32 · SPLIT_MERGE_ROWS` threads (a warp per query row),
///   combines each row's segments into `out`.
///
/// The whole-tile kernel then runs the first `grid[0] - tiles` query tiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionSplit {
    /// The `extern "C"` kernel computing key segments of query tiles.
    pub part_kernel: String,
    /// The `extern "C"` kernel combining them.
    pub merge_kernel: String,
    /// f32 values each CTA of the part kernel writes.
    pub part_floats: u32,
}

/// Query rows of an [`AttentionSplit`]'s merge CTA (one warp each).
pub const SPLIT_MERGE_ROWS: u32 = 4;

/// A launch of a flash-attention kernel. q, k, v and out are contiguous
/// `[batch, seq, heads, head_dim]` (with [`AttentionOperands::Fp8TensorMaps`],
/// q, k and v are e4m3, v is the key-innermost copy `vt` that variant
/// describes, and out is bf16). The kernel's parameters are `(q, k, v,
/// out, seq_q, seq_kv, heads, scale)`, q/k/v as `operands` says; an fp8
/// kernel takes the three scale pointers after `out`: `(q, k, vt, out,
/// q_scale, k_scale, v_scale, seq_q, seq_kv, heads, scale)`. It runs on a
/// grid of `(ceil(seq_q / block_m), heads, batch)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// The `extern "C"` kernel name.
    pub kernel: String,
    /// How the kernel takes q, k and v.
    pub operands: AttentionOperands,
    /// Grid size.
    pub grid: [u32; 3],
    /// Block size.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// Queries.
    pub q: Tensor,
    /// Keys.
    pub k: Tensor,
    /// Values (fp8: their key-innermost copy, see
    /// [`AttentionOperands::Fp8TensorMaps`]).
    pub v: Tensor,
    /// Output.
    pub out: Tensor,
    /// Batch.
    pub batch: u32,
    /// Heads.
    pub heads: u32,
    /// Query length.
    pub seq_q: u32,
    /// Key/value length.
    pub seq_kv: u32,
    /// Head width.
    pub head_dim: u32,
    /// Score scale (`1/√head_dim`).
    pub scale: f32,
    /// The dequantization scales of fp8 q, k and v (fp8 kernels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<AttentionScales>,
    /// The kernel's entry points for query tiles split over their keys,
    /// where it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<AttentionSplit>,
}

/// A device-to-device copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Source.
    pub src: Tensor,
    /// Destination.
    pub dst: Tensor,
    /// Bytes copied.
    pub bytes: u64,
}

/// One step of a forward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A generated kernel.
    Launch(Launch),
    /// A cuBLASLt matmul.
    Gemm(Gemm),
    /// The attention kernel.
    Attention(Attention),
    /// A copy.
    Copy(Copy),
    /// A cuDNN convolution.
    Conv(Conv),
}

/// One cuDNN convolution, channels-last:
/// `y[n, p, q, k] = Σ x[n, p·sh − ph + r', q·sw − pw + s', c] · w[k, r', s', c] (+ bias[k])`,
/// zeros outside the image, f32 accumulation (`cudnnConvolutionForward`, then
/// `cudnnAddTensor` for the bias).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv {
    /// What it computes, for reports.
    pub name: String,
    /// Type of x, w, y and the bias.
    pub dtype: ElemType,
    /// The image, `[batch, height, width, in_channels]`.
    pub x: Tensor,
    /// The filter, `[out_channels, kernel_h, kernel_w, in_channels]`.
    pub w: Tensor,
    /// The output, `[batch, out_h, out_w, out_channels]`.
    pub y: Tensor,
    /// The bias, `[out_channels]`.
    pub bias: Option<Tensor>,
    /// `[batch, height, width, in_channels]`.
    pub input: [u32; 4],
    /// `[out_channels, kernel_h, kernel_w]`.
    pub filter: [u32; 3],
    /// Zero padding on each side, `[h, w]`.
    pub padding: [u32; 2],
    /// `[h, w]`.
    pub stride: [u32; 2],
    /// `[out_h, out_w]`.
    pub output: [u32; 2],
}

/// `schedule.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Bytes of the activation arena.
    pub arena_bytes: u64,
    /// Bytes of the weight region.
    pub weight_bytes: u64,
    /// Bytes of the scratch region (zeroed once by the runtime).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scratch_bytes: u64,
    /// Bytes of cuBLASLt workspace the GEMMs may use.
    pub gemm_workspace_bytes: u64,
    /// Every buffer; `buffers[i].id == i`.
    pub buffers: Vec<Buffer>,
    /// Graph inputs the application fills before a run.
    pub inputs: Vec<Binding>,
    /// Graph outputs it reads after.
    pub outputs: Vec<Binding>,
    /// The forward, in order.
    pub steps: Vec<Step>,
}

/// A schedule that cannot be run as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule: {0}")]
pub struct ScheduleError(pub String);

impl Schedule {
    /// Checks that ids are dense, buffers fit their regions, every address a
    /// step uses lies inside its buffer, and launch shapes are sane.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let fail = |msg: String| Err(ScheduleError(msg));
        for (i, b) in self.buffers.iter().enumerate() {
            if b.id as usize != i {
                return fail(format!("buffer {i} has id {}", b.id));
            }
            if b.bytes != b.elements() * b.dtype.size_bytes() {
                return fail(format!(
                    "buffer {i} `{}`: size does not match its shape",
                    b.name
                ));
            }
            let region = match b.region {
                Region::Arena => self.arena_bytes,
                Region::Weights => self.weight_bytes,
                Region::Scratch => self.scratch_bytes,
            };
            if b.offset.checked_add(b.bytes).is_none_or(|end| end > region) {
                return fail(format!("buffer {i} `{}` lies outside its region", b.name));
            }
        }
        for binding in self.inputs.iter().chain(&self.outputs) {
            if binding.buffer as usize >= self.buffers.len() {
                return fail(format!("binding `{}` names no buffer", binding.name));
            }
        }
        for (s, step) in self.steps.iter().enumerate() {
            for t in step.tensors() {
                let Some(b) = self.buffers.get(t.buffer as usize) else {
                    return fail(format!("step {s} uses missing buffer {}", t.buffer));
                };
                if t.offset >= b.bytes {
                    return fail(format!("step {s} addresses past the end of `{}`", b.name));
                }
            }
            if let Some((grid, block)) = step.launch_shape() {
                let threads: u64 = block.iter().map(|&d| d as u64).product();
                if grid.contains(&0) || block.contains(&0) || threads > 1024 {
                    return fail(format!("step {s} has launch shape {grid:?} x {block:?}"));
                }
            }
        }
        Ok(())
    }
}

impl Step {
    /// Every device address the step uses.
    pub fn tensors(&self) -> Vec<Tensor> {
        match self {
            Step::Launch(l) => l
                .args
                .iter()
                .filter_map(|a| match a {
                    Arg::Ptr(t) => Some(*t),
                    _ => None,
                })
                .collect(),
            Step::Gemm(g) => [
                Some(g.a),
                Some(g.b),
                Some(g.d),
                g.bias,
                g.scales.map(|s| s.a),
                g.scales.map(|s| s.b),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Step::Attention(a) => {
                let mut tensors = vec![a.q, a.k, a.v, a.out];
                tensors.extend(a.scales.iter().flat_map(|s| [s.q, s.k, s.v]));
                tensors
            }
            Step::Copy(c) => vec![c.src, c.dst],
            Step::Conv(c) => [Some(c.x), Some(c.w), Some(c.y), c.bias]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    /// Grid and block of kernel launches.
    pub fn launch_shape(&self) -> Option<([u32; 3], [u32; 3])> {
        match self {
            Step::Launch(l) => Some((l.grid, l.block)),
            Step::Attention(a) => Some((a.grid, a.block)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp8_attention() -> Attention {
        Attention {
            kernel: "attention_fp8_d128".into(),
            operands: AttentionOperands::Fp8TensorMaps {
                q_rows: 128,
                kv_rows: 256,
                vt_rows: 128,
                vt_keys: 336,
            },
            grid: [2, 2, 1],
            block: [384, 1, 1],
            shared_bytes: 99_328,
            q: Tensor::of(0),
            k: Tensor::of(1),
            v: Tensor::of(2),
            out: Tensor::of(3),
            batch: 1,
            heads: 2,
            seq_q: 200,
            seq_kv: 333,
            head_dim: 128,
            scale: 0.088_388_35,
            scales: Some(AttentionScales {
                q: Tensor::of(4),
                k: Tensor::of(5),
                v: Tensor {
                    buffer: 6,
                    offset: 4,
                },
            }),
            split: None,
        }
    }

    #[test]
    fn fp8_attention_round_trips_and_lists_its_scales() {
        let step = Step::Attention(fp8_attention());
        let json = serde_json::to_string(&step).unwrap();
        assert!(
            json.contains(
                r#""fp8_tensor_maps":{"q_rows":128,"kv_rows":256,"vt_rows":128,"vt_keys":336}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        let buffers: Vec<BufferId> = step.tensors().iter().map(|t| t.buffer).collect();
        assert_eq!(buffers, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn bf16_attention_has_no_scales_field() {
        let bf16 = Attention {
            operands: AttentionOperands::TensorMaps {
                q_rows: 128,
                kv_rows: 192,
            },
            scales: None,
            ..fp8_attention()
        };
        let json = serde_json::to_string(&Step::Attention(bf16.clone())).unwrap();
        assert!(!json.contains("scales"), "{json}");
        assert_eq!(
            serde_json::from_str::<Step>(&json).unwrap(),
            Step::Attention(bf16)
        );
        assert_eq!(Step::Attention(fp8_attention()).tensors().len(), 7);
    }
}
