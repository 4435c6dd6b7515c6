//! Turning schedule steps into what the GPU calls need, on the host:
//! device addresses (`region base + buffer offset + tensor offset`), kernel
//! parameter lists, and checks that every GEMM, attention and copy stays
//! inside the buffers it names (the schedule only records where an access
//! starts; a mistake in its extent would otherwise be a GPU fault).

use std::collections::BTreeMap;
use std::ffi::c_void;

use fluxc_artifact::{Arg, Buffer, ElemType, GemmEpilogue, Region, Schedule, Step, Tensor};

use crate::RuntimeError;

/// Device addresses of the two regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bases {
    /// The activation arena.
    pub arena: u64,
    /// The weight region.
    pub weights: u64,
}

/// The device address of `t` (the schedule is validated, so the buffer
/// exists and the offset lies inside it).
pub(crate) fn address(schedule: &Schedule, bases: Bases, t: Tensor) -> u64 {
    let b = &schedule.buffers[t.buffer as usize];
    let base = match b.region {
        Region::Arena => bases.arena,
        Region::Weights => bases.weights,
    };
    base + b.offset + t.offset
}

/// One kernel parameter, by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Param {
    /// A device address (a 64-bit pointer parameter).
    Ptr(u64),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
}

impl Param {
    /// A pointer to the value, as `cuLaunchKernel`'s `kernelParams` wants.
    pub(crate) fn as_kernel_param(&mut self) -> *mut c_void {
        match self {
            Param::Ptr(v) => v as *mut u64 as *mut c_void,
            Param::I32(v) => v as *mut i32 as *mut c_void,
            Param::F32(v) => v as *mut f32 as *mut c_void,
        }
    }
}

/// The parameters of a kernel launch or attention step, in order; `None`
/// for GEMMs and copies.
pub(crate) fn kernel_params(schedule: &Schedule, bases: Bases, step: &Step) -> Option<Vec<Param>> {
    match step {
        Step::Launch(l) => Some(
            l.args
                .iter()
                .map(|a| match a {
                    Arg::Ptr(t) => Param::Ptr(address(schedule, bases, *t)),
                    Arg::I32(v) => Param::I32(*v),
                    Arg::F32(v) => Param::F32(*v),
                })
                .collect(),
        ),
        Step::Attention(a) => {
            let ptr = |t| Param::Ptr(address(schedule, bases, t));
            // `as i32`: the extents were checked to fit in `check_step`.
            Some(vec![
                ptr(a.q),
                ptr(a.k),
                ptr(a.v),
                ptr(a.out),
                Param::I32(a.seq_q as i32),
                Param::I32(a.seq_kv as i32),
                Param::I32(a.heads as i32),
                Param::F32(a.scale),
            ])
        }
        Step::Gemm(_) | Step::Copy(_) => None,
    }
}

/// The step in words, for errors and logs.
pub(crate) fn describe_step(step: &Step) -> String {
    match step {
        Step::Launch(l) => format!("kernel `{}`", l.kernel),
        Step::Attention(a) => format!("attention kernel `{}`", a.kernel),
        Step::Gemm(g) => format!("gemm `{}` m={} n={} k={}", g.name, g.m, g.n, g.k),
        Step::Copy(c) => format!("copy of {} bytes", c.bytes),
    }
}

/// Every kernel the schedule launches, with the most dynamic shared memory
/// any of its launches asks for.
pub(crate) fn kernels(schedule: &Schedule) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for step in &schedule.steps {
        let (name, shared) = match step {
            Step::Launch(l) => (&l.kernel, l.shared_bytes),
            Step::Attention(a) => (&a.kernel, a.shared_bytes),
            _ => continue,
        };
        let e = out.entry(name.clone()).or_insert(0);
        *e = (*e).max(shared);
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
            if a.kernel.is_empty() || a.kernel.contains('\0') {
                return fail(format!("bad kernel name {:?}", a.kernel));
            }
            for (what, v) in [("seq_q", a.seq_q), ("seq_kv", a.seq_kv), ("heads", a.heads)] {
                if i32::try_from(v).is_err() {
                    return fail(format!("{what} = {v} does not fit an int parameter"));
                }
            }
            let per_q = u64::from(a.batch)
                * u64::from(a.seq_q)
                * u64::from(a.heads)
                * u64::from(a.head_dim);
            let per_kv = u64::from(a.batch)
                * u64::from(a.seq_kv)
                * u64::from(a.heads)
                * u64::from(a.head_dim);
            for (what, t, elements) in [
                ("q", a.q, per_q),
                ("k", a.k, per_kv),
                ("v", a.v, per_kv),
                ("out", a.out, per_q),
            ] {
                let b = buf(t);
                if let Err(e) = fits(b, t.offset, elements.saturating_mul(b.dtype.size_bytes())) {
                    return fail(format!("{what}: {e}"));
                }
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
            if !matches!(g.dtype, ElemType::Bf16 | ElemType::F16 | ElemType::F32) {
                return fail(format!(
                    "{:?} GEMMs are not supported by the runtime (bf16, f16 and f32 are)",
                    g.dtype
                ));
            }
            if g.m == 0 || g.n == 0 || g.k == 0 {
                return fail("a GEMM dimension is zero".into());
            }
            let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
            let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
            let size = g.dtype.size_bytes();
            for (what, t, rows, cols, ld) in [
                ("A", g.a, a_rows, a_cols, g.lda),
                ("B", g.b, b_rows, b_cols, g.ldb),
                ("D", g.d, g.m, g.n, g.ldd),
            ] {
                let b = buf(t);
                if b.dtype != g.dtype {
                    return fail(format!(
                        "{what} is buffer `{}` of {:?}, the GEMM is {:?}",
                        b.name, b.dtype, g.dtype
                    ));
                }
                if ld < rows {
                    return fail(format!(
                        "{what} is {rows}x{cols} column-major, but its leading dimension is {ld} < {rows}"
                    ));
                }
                let elements = (cols - 1).saturating_mul(ld).saturating_add(rows);
                if let Err(e) = fits(b, t.offset, elements.saturating_mul(size)) {
                    return fail(format!("{what}: {e}"));
                }
            }
            match (g.epilogue, g.bias) {
                (GemmEpilogue::Default, Some(_)) => {
                    return fail("a bias is given but the epilogue adds none".into())
                }
                (GemmEpilogue::Bias | GemmEpilogue::GeluBias, None) => {
                    return fail(format!("epilogue {:?} needs a bias", g.epilogue))
                }
                (_, Some(t)) => {
                    let b = buf(t);
                    if !matches!(b.dtype, ElemType::Bf16 | ElemType::F16 | ElemType::F32) {
                        return fail(format!("bias buffer `{}` is {:?}", b.name, b.dtype));
                    }
                    if let Err(e) = fits(b, t.offset, g.m.saturating_mul(b.dtype.size_bytes())) {
                        return fail(format!("bias: {e}"));
                    }
                }
                (GemmEpilogue::Default, None) => {}
            }
        }
    }
    Ok(())
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
    use fluxc_artifact::{Attention, Copy, Gemm, Launch};

    use super::*;

    fn buffer(id: u32, dtype: ElemType, shape: Vec<u64>, region: Region, offset: u64) -> Buffer {
        let bytes = shape.iter().product::<u64>() * dtype.size_bytes();
        Buffer {
            id,
            name: format!("b{id}"),
            dtype,
            shape,
            region,
            offset,
            bytes,
        }
    }

    /// x [4, 8] bf16 (arena), W [16, 8] bf16 (weights), bias [16], y [4, 16].
    fn schedule(steps: Vec<Step>) -> Schedule {
        Schedule {
            arena_bytes: 1024,
            weight_bytes: 1024,
            gemm_workspace_bytes: 0,
            buffers: vec![
                buffer(0, ElemType::Bf16, vec![4, 8], Region::Arena, 0),
                buffer(1, ElemType::Bf16, vec![16, 8], Region::Weights, 256),
                buffer(2, ElemType::Bf16, vec![16], Region::Weights, 0),
                buffer(3, ElemType::Bf16, vec![4, 16], Region::Arena, 512),
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
            algo: None,
        }
    }

    #[test]
    fn addresses_add_region_buffer_and_tensor_offsets() {
        let s = schedule(vec![]);
        let bases = Bases {
            arena: 0x1000_0000,
            weights: 0x2000_0000,
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
        };
        let s = schedule(vec![]);
        assert_eq!(
            kernel_params(&s, bases, &launch).unwrap(),
            vec![Param::Ptr(4096 + 16), Param::I32(-3), Param::F32(0.5)]
        );
        let att = Step::Attention(Attention {
            kernel: "attention_d128_bf16".into(),
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
        });
        assert_eq!(
            kernel_params(&s, bases, &att).unwrap(),
            vec![
                Param::Ptr(4096),
                Param::Ptr(4096),
                Param::Ptr(4096),
                Param::Ptr(4096 + 512),
                Param::I32(4),
                Param::I32(4),
                Param::I32(2),
                Param::F32(0.5)
            ]
        );
        assert!(check_step(&s, 0, &att).is_ok());
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
        g.dtype = ElemType::F8e4m3;
        assert!(msg(g).contains("not supported"));
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
        });
        let m = check_step(&s, 0, &att).unwrap_err().to_string();
        assert!(m.contains("k: needs 128 bytes"), "{m}");
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
