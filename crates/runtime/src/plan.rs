//! Turning schedule steps into what the GPU calls need, on the host:
//! device addresses (`region base + buffer offset + tensor offset`), kernel
//! parameter lists, and checks that every GEMM, attention and copy stays
//! inside the buffers it names (the schedule only records where an access
//! starts; a mistake in its extent would otherwise be a GPU fault).
//!
//! GEMM checks also cover what cuBLASLt needs of fp8 GEMMs (e4m3 A and B,
//! TN, `k` a multiple of 16, f32 scales, a bf16/f16/f32 D and the bias type
//! that goes with it), so an artifact it cannot run is refused with a reason
//! before any GPU work rather than with an opaque heuristic failure.

use std::collections::BTreeMap;
use std::ffi::c_void;

use fluxc_artifact::{
    Arg, Attention, AttentionOperands, Buffer, Conv, ElemType, Gemm, GemmEpilogue, Region,
    ScaleMode, Schedule, Step, Tensor, SPLIT_MERGE_ROWS,
};

use crate::tensor_map::{TensorMap, TensorMapSpec};
use crate::RuntimeError;

/// Device addresses of the three regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bases {
    /// The activation arena.
    pub arena: u64,
    /// The weight region.
    pub weights: u64,
    /// The scratch region (kernel-private state, zeroed once at load).
    pub scratch: u64,
}

impl Bases {
    /// The base address of `region`.
    pub(crate) fn of(self, region: Region) -> u64 {
        match region {
            Region::Arena => self.arena,
            Region::Weights => self.weights,
            Region::Scratch => self.scratch,
        }
    }
}

/// The device address of `t` (the schedule is validated, so the buffer
/// exists and the offset lies inside it).
pub(crate) fn address(schedule: &Schedule, bases: Bases, t: Tensor) -> u64 {
    let b = &schedule.buffers[t.buffer as usize];
    bases.of(b.region) + b.offset + t.offset
}

/// One kernel parameter, by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Param {
    /// A device address (a 64-bit pointer parameter).
    Ptr(u64),
    /// An `int`.
    I32(i32),
    /// A `long long` (element counts of the runtime's own kernels).
    I64(i64),
    /// A `float`.
    F32(f32),
    /// A `CUtensorMap` by value (`const __grid_constant__`).
    TensorMap(TensorMap),
}

impl Param {
    /// A pointer to the value, as `cuLaunchKernel`'s `kernelParams` wants.
    pub(crate) fn as_kernel_param(&mut self) -> *mut c_void {
        match self {
            Param::Ptr(v) => v as *mut u64 as *mut c_void,
            Param::I32(v) => v as *mut i32 as *mut c_void,
            Param::I64(v) => v as *mut i64 as *mut c_void,
            Param::F32(v) => v as *mut f32 as *mut c_void,
            Param::TensorMap(m) => m as *mut TensorMap as *mut c_void,
        }
    }
}

/// The parameters of a kernel launch or attention step, in order; `None`
/// for GEMMs and copies. Tensor maps are described here and encoded by
/// `encode` (the driver's `cuTensorMapEncodeTiled` in the engine, a stand-in
/// in tests); its error is the reason the step cannot run.
pub(crate) fn kernel_params(
    schedule: &Schedule,
    bases: Bases,
    step: &Step,
    encode: &dyn Fn(&TensorMapSpec) -> Result<TensorMap, String>,
) -> Result<Option<Vec<Param>>, String> {
    match step {
        Step::Launch(l) => Ok(Some(
            l.args
                .iter()
                .map(|a| match a {
                    Arg::Ptr(t) => Param::Ptr(address(schedule, bases, *t)),
                    Arg::I32(v) => Param::I32(*v),
                    Arg::F32(v) => Param::F32(*v),
                })
                .collect(),
        )),
        Step::Attention(a) => attention_params(schedule, bases, a, encode).map(Some),
        Step::Gemm(_) | Step::Copy(_) | Step::Conv(_) => Ok(None),
    }
}

/// The parameters of an attention step: q, k and v (pointers or tensor
/// maps), out, the three scale pointers of an fp8 kernel, then `seq_q`,
/// `seq_kv`, `heads` and `scale`.
fn attention_params(
    schedule: &Schedule,
    bases: Bases,
    a: &Attention,
    encode: &dyn Fn(&TensorMapSpec) -> Result<TensorMap, String>,
) -> Result<Vec<Param>, String> {
    let at = |t: Tensor| address(schedule, bases, t);
    let map = |spec: TensorMapSpec| encode(&spec).map(Param::TensorMap);
    let mut params = match a.operands {
        AttentionOperands::Pointers => [a.q, a.k, a.v].map(|t| Param::Ptr(at(t))).to_vec(),
        AttentionOperands::TensorMaps { q_rows, kv_rows } => {
            let operand = |t: Tensor, seq: u32, rows: u32| {
                map(TensorMapSpec::attention_operand(
                    at(t),
                    a.batch,
                    seq,
                    a.heads,
                    a.head_dim,
                    rows,
                ))
            };
            vec![
                operand(a.q, a.seq_q, q_rows)?,
                operand(a.k, a.seq_kv, kv_rows)?,
                operand(a.v, a.seq_kv, kv_rows)?,
            ]
        }
        AttentionOperands::Fp8TensorMaps {
            q_rows,
            kv_rows,
            vt_rows,
            vt_keys,
        } => {
            let rows = [q_rows, kv_rows, vt_rows];
            let [q, k, vt] = fp8_attention_maps(a, [at(a.q), at(a.k), at(a.v)], rows, vt_keys);
            vec![map(q)?, map(k)?, map(vt)?]
        }
    };
    params.push(Param::Ptr(at(a.out)));
    if let Some(s) = a.scales {
        params.extend([s.q, s.k, s.v].map(|t| Param::Ptr(at(t))));
    }
    // `as i32`: the extents were checked to fit in `check_step`.
    params.extend([
        Param::I32(a.seq_q as i32),
        Param::I32(a.seq_kv as i32),
        Param::I32(a.heads as i32),
        Param::F32(a.scale),
    ]);
    Ok(params)
}

/// The fp8 kernel's three tensor maps at addresses `[q, k, vt]`.
fn fp8_attention_maps(
    a: &Attention,
    [q, k, vt]: [u64; 3],
    [q_rows, kv_rows, vt_rows]: [u32; 3],
    vt_keys: u32,
) -> [TensorMapSpec; 3] {
    [
        TensorMapSpec::fp8_attention_operand(q, a.batch, a.seq_q, a.heads, a.head_dim, q_rows),
        TensorMapSpec::fp8_attention_operand(k, a.batch, a.seq_kv, a.heads, a.head_dim, kv_rows),
        TensorMapSpec::fp8_values_transposed(vt, a.batch, a.heads, a.head_dim, vt_keys, vt_rows),
    ]
}

/// The step in words, for errors and logs.
pub(crate) fn describe_step(step: &Step) -> String {
    match step {
        Step::Launch(l) => format!("kernel `{}`", l.kernel),
        Step::Attention(a) => format!("attention kernel `{}`", a.kernel),
        Step::Gemm(g) => {
            let mut text = format!("gemm `{}` m={} n={} k={}", g.name, g.m, g.n, g.k);
            if let Some(s) = g.scales {
                text.push_str(&format!(
                    ", {:?} → {:?}, {} scales",
                    g.dtype,
                    g.d_type(),
                    scale_mode_text(s.mode)
                ));
            }
            text
        }
        Step::Copy(c) => format!("copy of {} bytes", c.bytes),
        Step::Conv(c) => format!(
            "convolution `{}` {:?} → {}x{}x{}, filter {:?}",
            c.name, c.input, c.output[0], c.output[1], c.filter[0], c.filter
        ),
    }
}

/// Every kernel the schedule launches or may launch (an attention's split
/// entry points), with the most dynamic shared memory any of its launches
/// asks for.
pub(crate) fn kernels(schedule: &Schedule) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let mut add = |name: &String, shared: u32| {
        let e = out.entry(name.clone()).or_insert(0);
        *e = (*e).max(shared);
    };
    for step in &schedule.steps {
        match step {
            Step::Launch(l) => add(&l.kernel, l.shared_bytes),
            Step::Attention(a) => {
                add(&a.kernel, a.shared_bytes);
                if let Some(split) = &a.split {
                    add(&split.part_kernel, a.shared_bytes);
                    add(&split.merge_kernel, 0);
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks what the runtime can check of step `index` before running it:
/// kernel names, the extents of GEMM operands, attention tensors and copies
/// against their buffers, operand dtypes, and epilogue/bias consistency.
pub(crate) fn check_step(
    schedule: &Schedule,
    index: usize,
    step: &Step,
) -> Result<(), RuntimeError> {
    let fail = |reason: String| {
        Err(RuntimeError::Step {
            index,
            step: describe_step(step),
            reason,
        })
    };
    let buf = |t: Tensor| &schedule.buffers[t.buffer as usize];
    match step {
        Step::Launch(l) => {
            if l.kernel.is_empty() || l.kernel.contains('\0') {
                return fail(format!("bad kernel name {:?}", l.kernel));
            }
        }
        Step::Attention(a) => {
            let split_kernels = a
                .split
                .iter()
                .flat_map(|s| [&s.part_kernel, &s.merge_kernel]);
            for name in std::iter::once(&a.kernel).chain(split_kernels) {
                if name.is_empty() || name.contains('\0') {
                    return fail(format!("bad kernel name {name:?}"));
                }
            }
            if let Err(reason) = check_attention(schedule, a) {
                return fail(reason);
            }
        }
        Step::Copy(c) => {
            for (what, t) in [("source", c.src), ("destination", c.dst)] {
                if let Err(e) = fits(buf(t), t.offset, c.bytes) {
                    return fail(format!("{what}: {e}"));
                }
            }
        }
        Step::Gemm(g) => {
            if let Err(reason) = check_gemm(schedule, g) {
                return fail(reason);
            }
        }
        Step::Conv(c) => {
            if let Err(reason) = check_conv(schedule, c) {
                return fail(reason);
            }
        }
    }
    Ok(())
}

/// Checks one convolution step: nonzero sizes, an output size that matches
/// the input, filter, padding and stride, and each tensor's type and extent
/// in its buffer. The reason, in words, when it cannot run.
fn check_conv(schedule: &Schedule, c: &Conv) -> Result<(), String> {
    let buf = |t: Tensor| &schedule.buffers[t.buffer as usize];
    let [n, h, w, ch] = c.input;
    let [k, r, s] = c.filter;
    let [p, q] = c.output;
    if [n, h, w, ch, k, r, s, c.stride[0], c.stride[1]].contains(&0) {
        return Err("a convolution size or stride is zero".into());
    }
    let out = |size: u32, pad: u32, kernel: u32, stride: u32| {
        (u64::from(size) + 2 * u64::from(pad))
            .checked_sub(u64::from(kernel))
            .map(|d| d / u64::from(stride) + 1)
    };
    if out(h, c.padding[0], r, c.stride[0]) != Some(u64::from(p))
        || out(w, c.padding[1], s, c.stride[1]) != Some(u64::from(q))
    {
        return Err(format!(
            "output {p}x{q} does not follow from input {h}x{w}, filter {r}x{s}, padding {:?} \
             and stride {:?}",
            c.padding, c.stride
        ));
    }
    let count = |dims: &[u32]| {
        dims.iter()
            .fold(1u64, |a, &d| a.saturating_mul(u64::from(d)))
    };
    let bias = c.bias.map(|t| ("bias", t, count(&[k])));
    for (what, t, elements) in [
        ("x", c.x, count(&[n, h, w, ch])),
        ("w", c.w, count(&[k, r, s, ch])),
        ("y", c.y, count(&[n, p, q, k])),
    ]
    .into_iter()
    .chain(bias)
    {
        let b = buf(t);
        if b.dtype != c.dtype {
            return Err(format!(
                "{what} is buffer `{}` of {:?}, the convolution's is {:?}",
                b.name, b.dtype, c.dtype
            ));
        }
        fits(b, t.offset, elements.saturating_mul(c.dtype.size_bytes()))
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// Checks one attention step: parameters that must fit an `int`, every
/// tensor's extent in its buffer, the operand types each kind of kernel
/// takes, and the tensor maps the runtime will encode. The reason, in
/// words, when it cannot run.
fn check_attention(schedule: &Schedule, a: &Attention) -> Result<(), String> {
    let buf = |t: Tensor| &schedule.buffers[t.buffer as usize];
    for (what, v) in [("seq_q", a.seq_q), ("seq_kv", a.seq_kv), ("heads", a.heads)] {
        if i32::try_from(v).is_err() {
            return Err(format!("{what} = {v} does not fit an int parameter"));
        }
    }
    // Element counts (saturating: a hostile artifact must not overflow).
    let count = |dims: [u32; 4]| {
        dims.iter()
            .fold(1u64, |n, &d| n.saturating_mul(u64::from(d)))
    };
    let (b, h, d) = (a.batch, a.heads, a.head_dim);
    let per_q = count([b, a.seq_q, h, d]);
    let per_kv = count([b, a.seq_kv, h, d]);
    // The fp8 kernel's v is vt.
    let v_elements = match a.operands {
        AttentionOperands::Fp8TensorMaps { vt_keys, .. } => count([b, h, d, vt_keys]),
        _ => per_kv,
    };
    for (what, t, elements) in [
        ("q", a.q, per_q),
        ("k", a.k, per_kv),
        ("v", a.v, v_elements),
        ("out", a.out, per_q),
    ] {
        let b = buf(t);
        fits(b, t.offset, elements.saturating_mul(b.dtype.size_bytes()))
            .map_err(|e| format!("{what}: {e}"))?;
    }
    if let Some(split) = &a.split {
        let (AttentionOperands::TensorMaps { q_rows, .. }
        | AttentionOperands::Fp8TensorMaps { q_rows, .. }) = a.operands
        else {
            return Err("only tensor-map attention kernels split query tiles over keys".into());
        };
        // The part kernel's partial O, row maxima and row sums of a tile.
        let needed = u64::from(q_rows) * (u64::from(d) + 2);
        if u64::from(split.part_floats) < needed || q_rows % SPLIT_MERGE_ROWS != 0 {
            return Err(format!(
                "split: {} floats per part CTA and {q_rows}-row query tiles (needed: at least \
                 {needed} floats, rows a multiple of {SPLIT_MERGE_ROWS})",
                split.part_floats
            ));
        }
    }
    // Offsets only: the region bases are 256-byte aligned.
    let offset = |t: Tensor| buf(t).offset + t.offset;
    match a.operands {
        AttentionOperands::Pointers | AttentionOperands::TensorMaps { .. }
            if a.scales.is_some() =>
        {
            Err("scales are given, but only fp8 attention kernels take them".into())
        }
        AttentionOperands::Pointers => Ok(()),
        AttentionOperands::TensorMaps { q_rows, kv_rows } => {
            for (what, t, seq, rows) in [
                ("q", a.q, a.seq_q, q_rows),
                ("k", a.k, a.seq_kv, kv_rows),
                ("v", a.v, a.seq_kv, kv_rows),
            ] {
                if buf(t).dtype != ElemType::Bf16 {
                    return Err(format!("{what}: tensor maps are bf16 here"));
                }
                TensorMapSpec::attention_operand(
                    offset(t),
                    a.batch,
                    seq,
                    a.heads,
                    a.head_dim,
                    rows,
                )
                .check()
                .map_err(|e| format!("{what}: {e}"))?;
            }
            Ok(())
        }
        AttentionOperands::Fp8TensorMaps {
            q_rows,
            kv_rows,
            vt_rows,
            vt_keys,
        } => {
            let Some(scales) = a.scales else {
                return Err("an fp8 attention needs the scales of q, k and v".into());
            };
            if vt_rows == 0 || kv_rows % vt_rows != 0 {
                return Err(format!(
                    "vt_rows = {vt_rows} must divide kv_rows = {kv_rows} (a key tile is whole vt boxes)"
                ));
            }
            if vt_keys < a.seq_kv || vt_keys % 16 != 0 {
                return Err(format!(
                    "vt_keys = {vt_keys} must be a multiple of 16 no smaller than seq_kv = {}",
                    a.seq_kv
                ));
            }
            let rows = [q_rows, kv_rows, vt_rows];
            let maps = fp8_attention_maps(a, [a.q, a.k, a.v].map(offset), rows, vt_keys);
            for ((what, t), spec) in [("q", a.q), ("k", a.k), ("vt", a.v)].into_iter().zip(maps) {
                if buf(t).dtype != ElemType::F8e4m3 {
                    return Err(format!(
                        "{what} is buffer `{}` of {:?}; the fp8 attention kernel reads e4m3",
                        buf(t).name,
                        buf(t).dtype
                    ));
                }
                spec.check().map_err(|e| format!("{what}: {e}"))?;
            }
            if buf(a.out).dtype != ElemType::Bf16 {
                return Err(format!(
                    "out is buffer `{}` of {:?}; the fp8 attention kernel writes bf16",
                    buf(a.out).name,
                    buf(a.out).dtype
                ));
            }
            for (what, t) in [("q", scales.q), ("k", scales.k), ("v", scales.v)] {
                check_scales(buf(t), t.offset, 1).map_err(|e| format!("{what}'s scale: {e}"))?;
            }
            Ok(())
        }
    }
}

/// The scale mode in words, for errors and logs.
pub(crate) fn scale_mode_text(mode: ScaleMode) -> &'static str {
    match mode {
        ScaleMode::Tensor => "per-tensor (SCALAR_32F)",
        ScaleMode::OuterVector => "per-row/per-column (OUTER_VEC_32F)",
    }
}

/// Whether `dtype` is an 8-bit float.
pub(crate) fn is_fp8(dtype: ElemType) -> bool {
    matches!(dtype, ElemType::F8e4m3 | ElemType::F8e5m2)
}

/// The bias type cuBLASLt takes for an fp8 GEMM writing `d`: its own type
/// for 16-bit outputs, bf16 for f32 outputs (cuBLASLt's fp8 type table).
pub(crate) fn fp8_bias_type(d: ElemType) -> ElemType {
    match d {
        ElemType::F16 => ElemType::F16,
        _ => ElemType::Bf16,
    }
}

/// Checks one GEMM: operand types, fp8 requirements, extents, scales and
/// bias. The reason, in words, when it cannot run.
fn check_gemm(schedule: &Schedule, g: &Gemm) -> Result<(), String> {
    let buf = |t: Tensor| &schedule.buffers[t.buffer as usize];
    let d_dtype = gemm_d_type(g)?;
    if g.m == 0 || g.n == 0 || g.k == 0 {
        return Err("a GEMM dimension is zero".into());
    }
    if is_fp8(g.dtype) {
        check_fp8_layout(g)?;
    } else if g.fast_accumulation {
        return Err("fast accumulation is for fp8 GEMMs only".into());
    }
    let (a_rows, a_cols) = g.a_dims();
    let (b_rows, b_cols) = g.b_dims();
    let c = g.c.map(|c| ("C", c, d_dtype, g.m, g.n, g.ldd));
    for (what, t, dtype, rows, cols, ld) in [
        ("A", g.a, g.dtype, a_rows, a_cols, g.lda),
        ("B", g.b, g.dtype, b_rows, b_cols, g.ldb),
        ("D", g.d, d_dtype, g.m, g.n, g.ldd),
    ]
    .into_iter()
    .chain(c)
    {
        let b = buf(t);
        if b.dtype != dtype {
            return Err(format!(
                "{what} is buffer `{}` of {:?}, the GEMM's {what} is {dtype:?}",
                b.name, b.dtype
            ));
        }
        if ld < rows {
            return Err(format!(
                "{what} is {rows}x{cols} column-major, but its leading dimension is {ld} < {rows}"
            ));
        }
        // Each operand's extent in its own element size (fp8 A and B are
        // one byte an element, their bf16 D two).
        let elements = (cols - 1).saturating_mul(ld).saturating_add(rows);
        fits(b, t.offset, elements.saturating_mul(dtype.size_bytes()))
            .map_err(|e| format!("{what}: {e}"))?;
    }
    if let Some(s) = g.scales {
        let (a_count, b_count) = match s.mode {
            ScaleMode::Tensor => (1, 1),
            ScaleMode::OuterVector => (g.m, g.n),
        };
        for (what, t, count) in [("A's scales", s.a, a_count), ("B's scales", s.b, b_count)] {
            check_scales(buf(t), t.offset, count).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    check_bias(g, d_dtype, |t| buf(t))
}

/// The type of D, after checking the GEMM's type combination: bf16, f16
/// and f32 GEMMs without scales writing their own type, or e4m3 GEMMs with
/// scales writing bf16, f16 or f32.
fn gemm_d_type(g: &Gemm) -> Result<ElemType, String> {
    match (g.dtype, g.scales.is_some(), g.d_dtype) {
        (ElemType::F8e5m2, _, _) => {
            Err("e5m2 × e5m2 GEMMs are not supported by cuBLASLt (fp8 GEMMs here are e4m3)".into())
        }
        (ElemType::F8e4m3, false, _) => {
            Err("an fp8 GEMM needs scales (the dequantization factors of A and B)".into())
        }
        (ElemType::F8e4m3, true, None) => {
            Err("an fp8 GEMM needs d_dtype (the type of D: bf16, f16 or f32)".into())
        }
        (ElemType::F8e4m3, true, Some(d @ (ElemType::Bf16 | ElemType::F16 | ElemType::F32))) => {
            Ok(d)
        }
        (ElemType::F8e4m3, true, Some(d)) => Err(format!(
            "an fp8 GEMM writing {d:?} is not supported by the runtime (D is bf16, f16 or f32)"
        )),
        (ElemType::Bf16 | ElemType::F16 | ElemType::F32, true, _) => Err(format!(
            "scales are given, but the GEMM is {:?}: only fp8 GEMMs take scales",
            g.dtype
        )),
        (t @ (ElemType::Bf16 | ElemType::F16 | ElemType::F32), false, None) => Ok(t),
        (t @ (ElemType::Bf16 | ElemType::F16 | ElemType::F32), false, Some(d)) if d == t => Ok(t),
        (t @ (ElemType::Bf16 | ElemType::F16 | ElemType::F32), false, Some(d)) => Err(format!(
            "a {t:?} GEMM writing {d:?} is not supported by the runtime (only fp8 GEMMs \
             write another type)"
        )),
        (t, _, _) => Err(format!(
            "{t:?} GEMMs are not supported by the runtime (bf16, f16, f32 and fp8 e4m3 are)"
        )),
    }
}

/// cuBLASLt's layout requirements of fp8 GEMMs: A transposed and B not
/// (TN), and the reduced dimension and the operands' leading dimensions
/// multiples of 16 elements (16 bytes).
fn check_fp8_layout(g: &Gemm) -> Result<(), String> {
    if !g.trans_a || g.trans_b {
        return Err(format!(
            "cuBLASLt fp8 GEMMs must be TN (trans_a = true, trans_b = false); this one has \
             trans_a = {}, trans_b = {}",
            g.trans_a, g.trans_b
        ));
    }
    if g.k % 16 != 0 {
        return Err(format!(
            "k = {} is not a multiple of 16, which cuBLASLt fp8 GEMMs need",
            g.k
        ));
    }
    for (what, ld) in [("lda", g.lda), ("ldb", g.ldb)] {
        if ld % 16 != 0 {
            return Err(format!(
                "{what} = {ld} is not a multiple of 16, which cuBLASLt fp8 GEMMs need"
            ));
        }
    }
    Ok(())
}

/// Fails unless `b` holds `count` f32 scales from `offset`, aligned.
fn check_scales(b: &Buffer, offset: u64, count: u64) -> Result<(), String> {
    if b.dtype != ElemType::F32 {
        return Err(format!(
            "buffer `{}` is {:?}; scales are f32",
            b.name, b.dtype
        ));
    }
    if offset % 4 != 0 {
        return Err(format!(
            "offset {offset} into buffer `{}` is not a multiple of 4",
            b.name
        ));
    }
    fits(b, offset, count.saturating_mul(4))
}

/// Checks the bias against the epilogue: present exactly for the bias
/// epilogues, `m` values, of a type cuBLASLt takes with D of `d_dtype`.
fn check_bias<'s>(
    g: &Gemm,
    d_dtype: ElemType,
    buf: impl Fn(Tensor) -> &'s Buffer,
) -> Result<(), String> {
    let t = match (g.epilogue, g.bias) {
        (GemmEpilogue::Default, None) => return Ok(()),
        (GemmEpilogue::Default, Some(_)) => {
            return Err("a bias is given but the epilogue adds none".into())
        }
        (GemmEpilogue::Bias | GemmEpilogue::GeluBias, None) => {
            return Err(format!("epilogue {:?} needs a bias", g.epilogue))
        }
        (_, Some(t)) => t,
    };
    let b = buf(t);
    if is_fp8(g.dtype) {
        let want = fp8_bias_type(d_dtype);
        if b.dtype != want {
            return Err(format!(
                "bias buffer `{}` is {:?}; cuBLASLt takes a {want:?} bias for an fp8 GEMM \
                 writing {d_dtype:?}",
                b.name, b.dtype
            ));
        }
    } else if !matches!(b.dtype, ElemType::Bf16 | ElemType::F16 | ElemType::F32) {
        return Err(format!("bias buffer `{}` is {:?}", b.name, b.dtype));
    }
    fits(b, t.offset, g.m.saturating_mul(b.dtype.size_bytes())).map_err(|e| format!("bias: {e}"))
}

/// Fails unless `bytes` bytes from `offset` lie inside `b`.
fn fits(b: &Buffer, offset: u64, bytes: u64) -> Result<(), String> {
    if offset.checked_add(bytes).is_some_and(|end| end <= b.bytes) {
        return Ok(());
    }
    Err(format!(
        "needs {bytes} bytes at offset {offset} of buffer {} `{}`, which has {} bytes",
        b.id, b.name, b.bytes
    ))
}

#[cfg(test)]
mod tests {
    use fluxc_artifact::{Attention, AttentionScales, AttentionSplit, Copy, GemmScales, Launch};

    use super::*;

    fn buffer(id: u32, dtype: ElemType, shape: Vec<u64>, region: Region, offset: u64) -> Buffer {
        Buffer::new(id, format!("b{id}"), dtype, shape, region, offset)
    }

    /// x [4, 8] bf16 (arena), W [16, 8] bf16 (weights), bias [16], y [4, 16];
    /// for fp8: W8 [16, 16] e4m3 (weights) with per-row scales sw [16],
    /// x8 [4, 16] e4m3 (arena) with per-token scales sx [4], an f32 bias
    /// [16], and a scratch counter.
    fn schedule(steps: Vec<Step>) -> Schedule {
        Schedule {
            arena_bytes: 1024,
            weight_bytes: 1024,
            scratch_bytes: 256,
            gemm_workspace_bytes: 0,
            buffers: vec![
                buffer(0, ElemType::Bf16, vec![4, 8], Region::Arena, 0),
                buffer(1, ElemType::Bf16, vec![16, 8], Region::Weights, 256),
                buffer(2, ElemType::Bf16, vec![16], Region::Weights, 0),
                buffer(3, ElemType::Bf16, vec![4, 16], Region::Arena, 512),
                buffer(4, ElemType::F8e4m3, vec![16, 16], Region::Weights, 512),
                buffer(5, ElemType::F8e4m3, vec![4, 16], Region::Arena, 256),
                buffer(6, ElemType::F32, vec![16], Region::Weights, 768),
                buffer(7, ElemType::F32, vec![4], Region::Arena, 768),
                buffer(8, ElemType::F32, vec![16], Region::Weights, 896),
                buffer(9, ElemType::I32, vec![4], Region::Scratch, 0),
            ],
            inputs: vec![],
            outputs: vec![],
            steps,
        }
    }

    /// `y = x Wᵀ + b` in cuBLAS terms.
    fn linear() -> Gemm {
        Gemm {
            name: "linear".into(),
            dtype: ElemType::Bf16,
            trans_a: true,
            trans_b: false,
            m: 16,
            n: 4,
            k: 8,
            a: Tensor::of(1),
            lda: 8,
            b: Tensor::of(0),
            ldb: 8,
            d: Tensor::of(3),
            ldd: 16,
            bias: Some(Tensor::of(2)),
            epilogue: GemmEpilogue::Bias,
            d_dtype: None,
            scales: None,
            fast_accumulation: false,
            algo: None,
            c: None,
        }
    }

    /// `y = (x8 · W8ᵀ) · sx · sw + b` in cuBLAS terms: e4m3 A = W8 and
    /// B = x8, bf16 D = y, per-row/per-column scales.
    fn fp8_linear() -> Gemm {
        Gemm {
            name: "fp8".into(),
            dtype: ElemType::F8e4m3,
            k: 16,
            a: Tensor::of(4),
            lda: 16,
            b: Tensor::of(5),
            ldb: 16,
            d_dtype: Some(ElemType::Bf16),
            scales: Some(GemmScales {
                mode: ScaleMode::OuterVector,
                a: Tensor::of(6),
                b: Tensor::of(7),
            }),
            ..linear()
        }
    }

    #[test]
    fn addresses_add_region_buffer_and_tensor_offsets() {
        let s = schedule(vec![]);
        let bases = Bases {
            arena: 0x1000_0000,
            weights: 0x2000_0000,
            scratch: 0x3000_0000,
        };
        assert_eq!(address(&s, bases, Tensor::of(3)), 0x1000_0000 + 512);
        assert_eq!(
            address(
                &s,
                bases,
                Tensor {
                    buffer: 1,
                    offset: 32
                }
            ),
            0x2000_0000 + 256 + 32
        );
        assert_eq!(address(&s, bases, Tensor::of(9)), 0x3000_0000);
        assert_eq!(bases.of(Region::Scratch), 0x3000_0000);
    }

    #[test]
    fn kernel_params_follow_the_args() {
        let launch = Step::Launch(Launch {
            kernel: "k".into(),
            grid: [1, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 0,
            args: vec![
                Arg::Ptr(Tensor {
                    buffer: 0,
                    offset: 16,
                }),
                Arg::I32(-3),
                Arg::F32(0.5),
            ],
        });
        let bases = Bases {
            arena: 4096,
            weights: 0,
            scratch: 0,
        };
        let s = schedule(vec![]);
        let no_maps = |_: &TensorMapSpec| -> Result<TensorMap, String> { Err("no maps".into()) };
        assert_eq!(
            kernel_params(&s, bases, &launch, &no_maps).unwrap(),
            Some(vec![Param::Ptr(4096 + 16), Param::I32(-3), Param::F32(0.5)])
        );
        let att = Step::Attention(Attention {
            kernel: "attention_d128_bf16".into(),
            operands: AttentionOperands::Pointers,
            grid: [1, 1, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
            q: Tensor::of(0),
            k: Tensor::of(0),
            v: Tensor::of(0),
            out: Tensor::of(3),
            batch: 1,
            heads: 2,
            seq_q: 4,
            seq_kv: 4,
            head_dim: 4,
            scale: 0.5,
            scales: None,
            split: None,
        });
        assert_eq!(
            kernel_params(&s, bases, &att, &no_maps).unwrap(),
            Some(vec![
                Param::Ptr(4096),
                Param::Ptr(4096),
                Param::Ptr(4096),
                Param::Ptr(4096 + 512),
                Param::I32(4),
                Param::I32(4),
                Param::I32(2),
                Param::F32(0.5)
            ])
        );
        assert!(check_step(&s, 0, &att).is_ok());

        // Tensor-map operands: each of q, k, v is described by its address
        // and view and handed to the encoder; its error is the step's.
        let Step::Attention(mut a) = att else {
            unreachable!()
        };
        a.operands = AttentionOperands::TensorMaps {
            q_rows: 128,
            kv_rows: 192,
        };
        a.seq_kv = 3;
        let tma = Step::Attention(a);
        let fake = |m: &TensorMapSpec| -> Result<TensorMap, String> {
            let mut words = [0u64; 16];
            words[0] = m.address;
            words[1..5].copy_from_slice(&m.dims);
            words[5] = u64::from(m.box_dims[2]);
            Ok(TensorMap(words))
        };
        let params = kernel_params(&s, bases, &tma, &fake).unwrap().unwrap();
        let Param::TensorMap(k) = params[1] else {
            panic!("k is not a tensor map: {:?}", params[1])
        };
        assert_eq!(k.0[..6], [4096, 4, 2, 3, 1, 192]);
        let Param::TensorMap(q) = params[0] else {
            panic!("q is not a tensor map: {:?}", params[0])
        };
        assert_eq!(q.0[5], 128);
        assert_eq!(params[3], Param::Ptr(4096 + 512));
        assert_eq!(
            kernel_params(&s, bases, &tma, &no_maps).unwrap_err(),
            "no maps"
        );
        // Rows of 4 bf16 (8 bytes) are below the TMA's 16-byte stride
        // granularity: refused before any GPU work.
        let m = check_step(&s, 0, &tma).unwrap_err().to_string();
        assert!(m.contains("q: tensor map stride 8 bytes"), "{m}");
        let mut mut_param = Param::I32(7);
        let p = mut_param.as_kernel_param() as *const i32;
        // SAFETY: points at the i32 inside `mut_param`.
        assert_eq!(unsafe { *p }, 7);
    }

    #[test]
    fn gemm_extents_and_epilogues_are_checked() {
        let s = schedule(vec![]);
        let ok = Step::Gemm(linear());
        assert!(check_step(&s, 0, &ok).is_ok());

        let msg = |g: Gemm| check_step(&s, 7, &Step::Gemm(g)).unwrap_err().to_string();
        let mut g = linear();
        g.n = 5; // B and D run past x and y.
        let m = msg(g);
        assert!(m.starts_with("step 7 (gemm `linear`"), "{m}");
        assert!(m.contains("B: needs") && m.contains("`b0`"), "{m}");
        let mut g = linear();
        g.lda = 4;
        assert!(msg(g).contains("leading dimension is 4 < 8"));
        let mut g = linear();
        g.bias = None;
        assert!(msg(g).contains("needs a bias"));
        let mut g = linear();
        g.epilogue = GemmEpilogue::Default;
        assert!(msg(g).contains("adds none"));
        let mut g = linear();
        g.dtype = ElemType::I32;
        assert!(msg(g).contains("not supported"));
        let mut g = linear();
        g.d_dtype = Some(ElemType::Bf16);
        assert!(check_step(&s, 0, &Step::Gemm(g)).is_ok(), "d_dtype = dtype");
        let mut g = linear();
        g.d_dtype = Some(ElemType::F32);
        assert!(msg(g).contains("only fp8 GEMMs write another type"));
        let mut g = linear();
        g.scales = fp8_linear().scales;
        assert!(msg(g).contains("only fp8 GEMMs take scales"));
    }

    #[test]
    fn fp8_gemms_are_accepted_with_scales_and_a_bf16_d() {
        let s = schedule(vec![]);
        check_step(&s, 0, &Step::Gemm(fp8_linear())).unwrap();
        let tensor_scales = Gemm {
            scales: Some(GemmScales {
                mode: ScaleMode::Tensor,
                a: Tensor::of(6),
                b: Tensor {
                    buffer: 7,
                    offset: 12,
                },
            }),
            ..fp8_linear()
        };
        check_step(&s, 0, &Step::Gemm(tensor_scales)).unwrap();
        let no_bias = Gemm {
            bias: None,
            epilogue: GemmEpilogue::Default,
            ..fp8_linear()
        };
        check_step(&s, 0, &Step::Gemm(no_bias)).unwrap();
        let fast = Gemm {
            fast_accumulation: true,
            ..fp8_linear()
        };
        check_step(&s, 0, &Step::Gemm(fast)).unwrap();
        let bf16_fast = Gemm {
            fast_accumulation: true,
            ..linear()
        };
        let e = check_step(&s, 0, &Step::Gemm(bf16_fast)).unwrap_err();
        assert!(e.to_string().contains("fp8 GEMMs only"), "{e}");
        let m = describe_step(&Step::Gemm(fp8_linear()));
        assert!(
            m.contains("F8e4m3 → Bf16") && m.contains("OUTER_VEC_32F"),
            "{m}"
        );
    }

    #[test]
    fn fp8_gemms_need_what_cublaslt_needs() {
        let s = schedule(vec![]);
        let msg = |g: Gemm| check_step(&s, 3, &Step::Gemm(g)).unwrap_err().to_string();
        let has = |g: Gemm, needle: &str| {
            let m = msg(g);
            assert!(m.contains(needle), "{m}\nlacks {needle}");
            assert!(m.starts_with("step 3 (gemm `fp8`"), "{m}");
        };
        has(
            Gemm {
                scales: None,
                ..fp8_linear()
            },
            "needs scales",
        );
        has(
            Gemm {
                d_dtype: None,
                ..fp8_linear()
            },
            "needs d_dtype",
        );
        has(
            Gemm {
                d_dtype: Some(ElemType::F8e4m3),
                ..fp8_linear()
            },
            "writing F8e4m3 is not supported",
        );
        has(
            Gemm {
                dtype: ElemType::F8e5m2,
                ..fp8_linear()
            },
            "e5m2 × e5m2",
        );
        has(
            Gemm {
                trans_a: false,
                ..fp8_linear()
            },
            "must be TN",
        );
        has(
            Gemm {
                trans_b: true,
                ..fp8_linear()
            },
            "must be TN",
        );
        has(
            Gemm {
                k: 8,
                lda: 16,
                ldb: 16,
                ..fp8_linear()
            },
            "k = 8 is not a multiple of 16",
        );
        has(
            Gemm {
                lda: 24,
                ..fp8_linear()
            },
            "lda = 24 is not a multiple of 16",
        );
        // A must be e4m3 (W is bf16), D must be d_dtype (x8 is e4m3).
        has(
            Gemm {
                a: Tensor::of(1),
                ..fp8_linear()
            },
            "A is buffer `b1` of Bf16",
        );
        has(
            Gemm {
                d: Tensor::of(5),
                ..fp8_linear()
            },
            "D is buffer `b5` of F8e4m3",
        );
        // Extents: A is 16 × 16 one-byte elements; D 16 × 4 two-byte ones.
        has(
            Gemm {
                n: 5,
                ..fp8_linear()
            },
            "B: needs 80 bytes",
        );
        let mut g = fp8_linear();
        g.d = Tensor {
            buffer: 3,
            offset: 2,
        };
        has(g, "D: needs 128 bytes at offset 2");
    }

    #[test]
    fn fp8_scales_and_bias_are_checked() {
        let s = schedule(vec![]);
        let msg = |g: Gemm| check_step(&s, 0, &Step::Gemm(g)).unwrap_err().to_string();
        let with_scales = |mode, a: Tensor, b: Tensor| Gemm {
            scales: Some(GemmScales { mode, a, b }),
            ..fp8_linear()
        };
        // OuterVector: m = 16 values for A, n = 4 for B.
        let m = msg(with_scales(
            ScaleMode::OuterVector,
            Tensor::of(7),
            Tensor::of(6),
        ));
        assert!(
            m.contains("A's scales: needs 64 bytes") && m.contains("`b7`"),
            "{m}"
        );
        let m = msg(with_scales(
            ScaleMode::OuterVector,
            Tensor::of(6),
            Tensor {
                buffer: 7,
                offset: 4,
            },
        ));
        assert!(m.contains("B's scales: needs 16 bytes at offset 4"), "{m}");
        let m = msg(with_scales(ScaleMode::Tensor, Tensor::of(2), Tensor::of(7)));
        assert!(
            m.contains("A's scales") && m.contains("scales are f32"),
            "{m}"
        );
        let m = msg(with_scales(
            ScaleMode::Tensor,
            Tensor {
                buffer: 6,
                offset: 2,
            },
            Tensor::of(7),
        ));
        assert!(m.contains("not a multiple of 4"), "{m}");
        let m = msg(with_scales(
            ScaleMode::Tensor,
            Tensor {
                buffer: 6,
                offset: 64,
            },
            Tensor::of(7),
        ));
        assert!(m.contains("needs 4 bytes at offset 64"), "{m}");

        // A bf16 D takes a bf16 bias, an f32 D too; an f16 D an f16 one.
        let f32_bias = Gemm {
            bias: Some(Tensor::of(8)),
            ..fp8_linear()
        };
        let m = msg(f32_bias);
        assert!(
            m.contains("takes a Bf16 bias") && m.contains("`b8` is F32"),
            "{m}"
        );
        assert_eq!(fp8_bias_type(ElemType::F32), ElemType::Bf16);
        assert_eq!(fp8_bias_type(ElemType::F16), ElemType::F16);
        assert_eq!(fp8_bias_type(ElemType::Bf16), ElemType::Bf16);
    }

    #[test]
    fn convolutions_are_checked_against_their_buffers() {
        let s = schedule(vec![]);
        // A 1×1 convolution [1, 2, 2, 8] → [1, 2, 2, 16] over buffers 0..3.
        let conv = Conv {
            name: "conv".into(),
            dtype: ElemType::Bf16,
            x: Tensor::of(0),
            w: Tensor::of(1),
            y: Tensor::of(3),
            bias: Some(Tensor::of(2)),
            input: [1, 2, 2, 8],
            filter: [16, 1, 1],
            padding: [0, 0],
            stride: [1, 1],
            output: [2, 2],
        };
        check_step(&s, 0, &Step::Conv(conv.clone())).unwrap();
        let msg = |c: Conv| check_step(&s, 0, &Step::Conv(c)).unwrap_err().to_string();
        let m = msg(Conv {
            output: [3, 3],
            ..conv.clone()
        });
        assert!(m.contains("does not follow"), "{m}");
        let m = msg(Conv {
            x: Tensor::of(5),
            ..conv.clone()
        });
        assert!(m.contains("x is buffer") && m.contains("F8e4m3"), "{m}");
        let m = msg(Conv {
            input: [1, 4, 4, 8],
            output: [4, 4],
            ..conv.clone()
        });
        assert!(m.contains("x:"), "{m}");
        let m = msg(Conv {
            stride: [0, 1],
            ..conv.clone()
        });
        assert!(m.contains("zero"), "{m}");
        assert!(describe_step(&Step::Conv(conv)).contains("convolution `conv`"));
    }

    #[test]
    fn copies_and_attention_must_fit() {
        let s = schedule(vec![]);
        let copy = Step::Copy(Copy {
            src: Tensor::of(0),
            dst: Tensor {
                buffer: 3,
                offset: 64,
            },
            bytes: 64,
        });
        assert!(check_step(&s, 0, &copy).is_ok());
        let copy = Step::Copy(Copy {
            src: Tensor::of(0),
            dst: Tensor::of(3),
            bytes: 65,
        });
        let m = check_step(&s, 0, &copy).unwrap_err().to_string();
        assert!(m.contains("source: needs 65 bytes"), "{m}");
        let att = Step::Attention(Attention {
            kernel: "a".into(),
            operands: AttentionOperands::Pointers,
            grid: [1, 1, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
            q: Tensor::of(0),
            k: Tensor::of(0),
            v: Tensor::of(0),
            out: Tensor::of(0),
            batch: 1,
            heads: 2,
            seq_q: 4,
            seq_kv: 8,
            head_dim: 4,
            scale: 0.5,
            scales: None,
            split: None,
        });
        let m = check_step(&s, 0, &att).unwrap_err().to_string();
        assert!(m.contains("k: needs 128 bytes"), "{m}");
    }

    /// An fp8 attention over 1 batch, 2 heads of 16, 4 queries, 3 keys:
    /// q8 [1, 4, 2, 16] (0), k8 [1, 3, 2, 16] (1), vt [1, 2, 16, 16 keys]
    /// (2), bf16 out (3), three f32 scales (4, 5, 6), all in the arena.
    fn fp8_attention_schedule() -> (Schedule, Attention) {
        let s = Schedule {
            arena_bytes: 2048,
            buffers: vec![
                buffer(0, ElemType::F8e4m3, vec![1, 4, 2, 16], Region::Arena, 0),
                buffer(1, ElemType::F8e4m3, vec![1, 3, 2, 16], Region::Arena, 256),
                buffer(2, ElemType::F8e4m3, vec![512], Region::Arena, 512),
                buffer(3, ElemType::Bf16, vec![1, 4, 2, 16], Region::Arena, 1024),
                buffer(4, ElemType::F32, vec![1], Region::Arena, 1280),
                buffer(5, ElemType::F32, vec![1], Region::Arena, 1536),
                buffer(6, ElemType::F32, vec![1], Region::Arena, 1792),
            ],
            ..schedule(vec![])
        };
        let a = Attention {
            kernel: "attention_fp8_d16".into(),
            operands: AttentionOperands::Fp8TensorMaps {
                q_rows: 128,
                kv_rows: 16,
                vt_rows: 16,
                vt_keys: 16,
            },
            grid: [1, 2, 1],
            block: [384, 1, 1],
            shared_bytes: 70_000,
            q: Tensor::of(0),
            k: Tensor::of(1),
            v: Tensor::of(2),
            out: Tensor::of(3),
            batch: 1,
            heads: 2,
            seq_q: 4,
            seq_kv: 3,
            head_dim: 16,
            scale: 0.25,
            scales: Some(AttentionScales {
                q: Tensor::of(4),
                k: Tensor::of(5),
                v: Tensor::of(6),
            }),
            split: None,
        };
        (s, a)
    }

    #[test]
    fn fp8_attention_takes_byte_maps_and_scale_pointers() {
        let (s, a) = fp8_attention_schedule();
        let step = Step::Attention(a);
        check_step(&s, 0, &step).unwrap();
        let bases = Bases {
            arena: 0x10_0000,
            weights: 0,
            scratch: 0,
        };
        let fake = |m: &TensorMapSpec| -> Result<TensorMap, String> {
            let mut words = [0u64; 16];
            words[0] = m.address;
            words[1..5].copy_from_slice(&m.dims);
            words[5..9].copy_from_slice(&m.box_dims.map(u64::from));
            words[9] = m.element.bytes();
            Ok(TensorMap(words))
        };
        let params = kernel_params(&s, bases, &step, &fake).unwrap().unwrap();
        assert_eq!(params.len(), 11);
        let map = |i: usize| match params[i] {
            Param::TensorMap(m) => m.0,
            ref other => panic!("parameter {i} is not a tensor map: {other:?}"),
        };
        // q: bytes [16, 2, 4, 1], boxes of the head × 128 rows.
        assert_eq!(map(0)[..10], [0x10_0000, 16, 2, 4, 1, 16, 1, 128, 1, 1]);
        // k: 3 keys, boxes of 16 rows.
        assert_eq!(
            map(1)[..10],
            [0x10_0000 + 256, 16, 2, 3, 1, 16, 1, 16, 1, 1]
        );
        // vt: [16 keys, 16, 2, 1], boxes of 16 keys × the head.
        assert_eq!(
            map(2)[..10],
            [0x10_0000 + 512, 16, 16, 2, 1, 16, 16, 1, 1, 1]
        );
        assert_eq!(
            params[3..],
            [
                Param::Ptr(0x10_0000 + 1024),
                Param::Ptr(0x10_0000 + 1280),
                Param::Ptr(0x10_0000 + 1536),
                Param::Ptr(0x10_0000 + 1792),
                Param::I32(4),
                Param::I32(3),
                Param::I32(2),
                Param::F32(0.25),
            ]
        );
    }

    #[test]
    fn split_entry_points_are_loaded_and_checked() {
        let (s, fp8) = fp8_attention_schedule();
        let split = AttentionSplit {
            part_kernel: "a_part".into(),
            merge_kernel: "a_merge".into(),
            part_floats: 128 * 18,
        };
        let bf16 = Attention {
            kernel: "a".into(),
            operands: AttentionOperands::TensorMaps {
                q_rows: 128,
                kv_rows: 16,
            },
            scales: None,
            split: Some(split.clone()),
            ..fp8.clone()
        };
        let loaded = kernels(&Schedule {
            steps: vec![Step::Attention(bf16.clone())],
            ..s.clone()
        });
        let expected: Vec<(&str, u32)> = vec![("a", 70_000), ("a_merge", 0), ("a_part", 70_000)];
        assert_eq!(
            loaded
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            expected
        );
        let msg = |a: Attention| {
            check_step(&s, 0, &Step::Attention(a))
                .unwrap_err()
                .to_string()
        };
        let m = msg(Attention {
            split: Some(AttentionSplit {
                part_floats: 128 * 17,
                ..split.clone()
            }),
            ..bf16.clone()
        });
        assert!(m.contains("at least 2304 floats"), "{m}");
        let m = msg(Attention {
            split: Some(AttentionSplit {
                merge_kernel: String::new(),
                ..split.clone()
            }),
            ..bf16.clone()
        });
        assert!(m.contains("bad kernel name \"\""), "{m}");
        let m = msg(Attention {
            operands: AttentionOperands::Pointers,
            scales: None,
            split: Some(split.clone()),
            ..fp8.clone()
        });
        assert!(m.contains("only tensor-map attention kernels split"), "{m}");
        // The fp8 kernel splits too.
        let fp8_split = Attention {
            split: Some(split),
            ..fp8.clone()
        };
        assert_eq!(
            check_step(&s, 0, &Step::Attention(fp8_split)).map_err(|e| e.to_string()),
            check_step(&s, 0, &Step::Attention(fp8)).map_err(|e| e.to_string())
        );
    }

    #[test]
    fn fp8_attention_steps_are_checked() {
        let (s, good) = fp8_attention_schedule();
        let msg = |a: Attention| {
            check_step(&s, 2, &Step::Attention(a))
                .unwrap_err()
                .to_string()
        };
        let has = |a: Attention, needle: &str| {
            let m = msg(a);
            assert!(m.contains(needle), "{m}\nlacks {needle}");
            assert!(
                m.starts_with("step 2 (attention kernel `attention_fp8_d16`"),
                "{m}"
            );
        };
        has(
            Attention {
                scales: None,
                ..good.clone()
            },
            "needs the scales of q, k and v",
        );
        has(
            Attention {
                operands: AttentionOperands::TensorMaps {
                    q_rows: 128,
                    kv_rows: 16,
                },
                ..good.clone()
            },
            "only fp8 attention kernels take them",
        );
        let fp8 = |vt_keys| AttentionOperands::Fp8TensorMaps {
            q_rows: 128,
            kv_rows: 16,
            vt_rows: 16,
            vt_keys,
        };
        has(
            Attention {
                operands: fp8(8),
                ..good.clone()
            },
            "vt_keys = 8 must be a multiple of 16 no smaller than seq_kv = 3",
        );
        // 32 keys per row of vt: 1024 bytes, which buffer 2 does not have.
        has(
            Attention {
                operands: fp8(32),
                ..good.clone()
            },
            "v: needs 1024 bytes",
        );
        has(
            Attention {
                q: Tensor::of(3),
                ..good.clone()
            },
            "q is buffer `b3` of Bf16; the fp8 attention kernel reads e4m3",
        );
        has(
            Attention {
                out: Tensor::of(1),
                seq_q: 3,
                ..good.clone()
            },
            "the fp8 attention kernel writes bf16",
        );
        has(
            Attention {
                operands: AttentionOperands::Fp8TensorMaps {
                    q_rows: 128,
                    kv_rows: 24,
                    vt_rows: 24,
                    vt_keys: 16,
                },
                ..good.clone()
            },
            "vt: tensor map inner box of 24 u8 (24 bytes) is not a multiple of 16",
        );
        has(
            Attention {
                operands: AttentionOperands::Fp8TensorMaps {
                    q_rows: 128,
                    kv_rows: 256,
                    vt_rows: 256,
                    vt_keys: 16,
                },
                ..good.clone()
            },
            "vt: tensor map inner box of 256 u8 exceeds the 128-byte swizzle span",
        );
        has(
            Attention {
                operands: AttentionOperands::Fp8TensorMaps {
                    q_rows: 128,
                    kv_rows: 256,
                    vt_rows: 96,
                    vt_keys: 16,
                },
                ..good.clone()
            },
            "vt_rows = 96 must divide kv_rows = 256",
        );
        let mut bad_scale = good.clone();
        bad_scale.scales = Some(AttentionScales {
            q: Tensor::of(4),
            k: Tensor::of(3),
            v: Tensor::of(6),
        });
        has(bad_scale, "k's scale: buffer `b3` is Bf16; scales are f32");
        let mut past_end = good;
        past_end.scales = Some(AttentionScales {
            q: Tensor::of(4),
            k: Tensor::of(5),
            v: Tensor {
                buffer: 6,
                offset: 4,
            },
        });
        has(past_end, "v's scale: needs 4 bytes at offset 4");
    }

    #[test]
    fn kernels_keep_the_largest_shared_memory() {
        let launch = |name: &str, shared| {
            Step::Launch(Launch {
                kernel: name.into(),
                grid: [1, 1, 1],
                block: [32, 1, 1],
                shared_bytes: shared,
                args: vec![],
            })
        };
        let s = schedule(vec![launch("a", 10), launch("b", 0), launch("a", 70000)]);
        let k = kernels(&s);
        assert_eq!(k.len(), 2);
        assert_eq!(k["a"], 70000);
        assert_eq!(k["b"], 0);
    }
}
