//! A builder API over [`Graph`]: one method per op, a scope stack that names
//! where nodes come from, and `finish()` which verifies the result.
//!
//! Every method infers the new node's type immediately and returns an error
//! naming the op and scope when operands do not fit, so a model builder fails
//! at the line that built the bad node rather than in a later pass.

use crate::{
    verify, BinaryOp, DType, Graph, InputKind, IrError, NodeId, Op, Scalar, Shape, TensorType,
    TimestepParams, UnaryOp,
};

/// Incrementally builds a verified [`Graph`].
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: Graph,
    scope: Vec<String>,
}

impl GraphBuilder {
    /// An empty builder at the root scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters a child scope (`a.b` + `c` → `a.b.c`).
    pub fn push_scope(&mut self, name: impl Into<String>) {
        self.scope.push(name.into());
    }

    /// Leaves the innermost scope.
    pub fn pop_scope(&mut self) {
        self.scope.pop();
    }

    /// The current scope as a dotted path.
    pub fn scope(&self) -> String {
        self.scope.join(".")
    }

    /// The type of a value built so far.
    pub fn ty(&self, v: NodeId) -> &TensorType {
        self.graph.ty(v)
    }

    /// The shape of a value built so far.
    pub fn shape(&self, v: NodeId) -> &[usize] {
        self.graph.ty(v).shape.dims()
    }

    /// The graph built so far (for inspection).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// An activation input fed at run time.
    pub fn input(
        &mut self,
        name: &str,
        dtype: DType,
        shape: impl Into<Shape>,
    ) -> Result<NodeId, IrError> {
        let scope = self.scope();
        self.graph
            .add_input(name, InputKind::Activation, dtype, shape, &scope)
    }

    /// A weight input, named as the tensor is named in a diffusers checkpoint.
    pub fn weight(
        &mut self,
        name: &str,
        dtype: DType,
        shape: impl Into<Shape>,
    ) -> Result<NodeId, IrError> {
        let scope = self.scope();
        self.graph
            .add_input(name, InputKind::Weight, dtype, shape, &scope)
    }

    /// Adds any op (the typed helpers below all go through here).
    pub fn op(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, IrError> {
        let scope = self.scope();
        self.graph.add_node(op, operands, &scope)
    }

    /// Names a graph output.
    pub fn output(&mut self, name: &str, value: NodeId) -> Result<(), IrError> {
        self.graph.set_output(name, value)
    }

    /// Verifies and returns the graph.
    pub fn finish(self) -> Result<Graph, IrError> {
        verify(&self.graph)?;
        Ok(self.graph)
    }

    /// Elementwise unary function.
    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId, IrError> {
        self.op(Op::Unary(op), &[x])
    }

    /// `x·sigmoid(x)`.
    pub fn silu(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        self.unary(UnaryOp::Silu, x)
    }

    /// GELU, tanh approximation.
    pub fn gelu_tanh(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        self.unary(UnaryOp::GeluTanh, x)
    }

    /// Elementwise binary op with broadcasting.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.op(Op::Binary(op), &[a, b])
    }

    /// `a + b`.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b`.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a · b`.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`.
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `x ∘ c` for a constant.
    pub fn scalar(&mut self, op: BinaryOp, x: NodeId, c: f32) -> Result<NodeId, IrError> {
        self.op(
            Op::BinaryScalar {
                op,
                scalar: Scalar(c),
            },
            &[x],
        )
    }

    /// `x + c`.
    pub fn add_scalar(&mut self, x: NodeId, c: f32) -> Result<NodeId, IrError> {
        self.scalar(BinaryOp::Add, x, c)
    }

    /// `x · c`.
    pub fn mul_scalar(&mut self, x: NodeId, c: f32) -> Result<NodeId, IrError> {
        self.scalar(BinaryOp::Mul, x, c)
    }

    /// Conversion to `dtype`; returns `x` itself when it already has it.
    pub fn cast(&mut self, x: NodeId, dtype: DType) -> Result<NodeId, IrError> {
        if self.ty(x).dtype == dtype {
            return Ok(x);
        }
        self.op(Op::Cast(dtype), &[x])
    }

    /// `x · wᵀ (+ bias)`.
    pub fn linear(
        &mut self,
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
    ) -> Result<NodeId, IrError> {
        let mut operands = vec![x, w];
        operands.extend(bias);
        self.op(Op::Linear, &operands)
    }

    /// Batched matrix product.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.op(Op::MatMul, &[a, b])
    }

    /// Channels-last 2-D convolution with symmetric padding.
    pub fn conv2d(
        &mut self,
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
        stride: usize,
        padding: usize,
    ) -> Result<NodeId, IrError> {
        let mut operands = vec![x, w];
        operands.extend(bias);
        self.op(
            Op::Conv2d {
                stride: [stride; 2],
                padding: [padding; 2],
                groups: 1,
            },
            &operands,
        )
    }

    /// Layer norm over the last axis, with optional `(weight, bias)`.
    pub fn layer_norm(
        &mut self,
        x: NodeId,
        affine: Option<(NodeId, NodeId)>,
        eps: f32,
    ) -> Result<NodeId, IrError> {
        let mut operands = vec![x];
        if let Some((w, b)) = affine {
            operands.extend([w, b]);
        }
        self.op(Op::LayerNorm { eps: Scalar(eps) }, &operands)
    }

    /// RMS norm over the last axis, with an optional weight.
    pub fn rms_norm(
        &mut self,
        x: NodeId,
        weight: Option<NodeId>,
        eps: f32,
    ) -> Result<NodeId, IrError> {
        let mut operands = vec![x];
        operands.extend(weight);
        self.op(Op::RmsNorm { eps: Scalar(eps) }, &operands)
    }

    /// Channels-last group norm.
    pub fn group_norm(
        &mut self,
        x: NodeId,
        weight: NodeId,
        bias: NodeId,
        groups: usize,
        eps: f32,
    ) -> Result<NodeId, IrError> {
        self.op(
            Op::GroupNorm {
                groups,
                eps: Scalar(eps),
            },
            &[x, weight, bias],
        )
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        self.op(Op::Softmax, &[x])
    }

    /// Attention over `[B, S, H, D]` tensors with scale `1/√D`.
    pub fn attention(&mut self, q: NodeId, k: NodeId, v: NodeId) -> Result<NodeId, IrError> {
        let d = self.ty(q).shape.last().unwrap_or(1).max(1);
        let scale = 1.0 / (d as f32).sqrt();
        self.op(
            Op::Attention {
                scale: Scalar(scale),
            },
            &[q, k, v],
        )
    }

    /// Attention over fp8 e4m3 `q8`, `k8` and unquantized `v` (`[B, S, H,
    /// D]`) with their per-tensor (de)quantization scales (f32 `[1]`) and
    /// score scale `scale`, writing bf16 (see [`Op::ScaledAttention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn scaled_attention(
        &mut self,
        q8: NodeId,
        q_scale: NodeId,
        k8: NodeId,
        k_scale: NodeId,
        v: NodeId,
        v_scale: NodeId,
        scale: f32,
    ) -> Result<NodeId, IrError> {
        self.op(
            Op::ScaledAttention {
                scale: Scalar(scale),
            },
            &[q8, q_scale, k8, k_scale, v, v_scale],
        )
    }

    /// Rotary table from position ids.
    pub fn rope_table(
        &mut self,
        ids: NodeId,
        axes_dim: &[usize],
        theta: f32,
    ) -> Result<NodeId, IrError> {
        self.op(
            Op::RopeTable {
                axes_dim: axes_dim.to_vec(),
                theta: Scalar(theta),
            },
            &[ids],
        )
    }

    /// Applies a rotary table to `[B, S, H, D]`.
    pub fn apply_rope(&mut self, x: NodeId, table: NodeId) -> Result<NodeId, IrError> {
        self.op(Op::ApplyRope, &[x, table])
    }

    /// Sinusoidal timestep embedding.
    pub fn timestep_embedding(
        &mut self,
        t: NodeId,
        params: TimestepParams,
    ) -> Result<NodeId, IrError> {
        self.op(Op::TimestepEmbedding(params), &[t])
    }

    /// New shape, same elements.
    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId, IrError> {
        self.op(Op::Reshape(shape.into()), &[x])
    }

    /// Axis permutation.
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId, IrError> {
        self.op(Op::Permute(perm.to_vec()), &[x])
    }

    /// `x[start..end]` along `axis`.
    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> Result<NodeId, IrError> {
        self.op(Op::Slice { axis, start, end }, &[x])
    }

    /// Splits `x` along `axis` into consecutive pieces of the given sizes
    /// (one `slice` node per piece). The sizes must add up to the extent.
    pub fn split(
        &mut self,
        x: NodeId,
        axis: usize,
        sizes: &[usize],
    ) -> Result<Vec<NodeId>, IrError> {
        let extent = self.ty(x).shape.dims().get(axis).copied();
        if extent != Some(sizes.iter().sum()) {
            return Err(IrError::Type {
                op: "split".into(),
                scope: self.scope(),
                msg: format!(
                    "sizes {sizes:?} do not add up to axis {axis} of {}",
                    self.ty(x).shape
                ),
            });
        }
        let mut start = 0;
        let mut pieces = Vec::with_capacity(sizes.len());
        for &size in sizes {
            pieces.push(self.slice(x, axis, start, start + size)?);
            start += size;
        }
        Ok(pieces)
    }

    /// Splits `x` along `axis` into `n` equal pieces (PyTorch's `chunk` when
    /// `n` divides the extent).
    pub fn chunk(&mut self, x: NodeId, axis: usize, n: usize) -> Result<Vec<NodeId>, IrError> {
        let extent = self.ty(x).shape.dims().get(axis).copied().unwrap_or(0);
        if n == 0 || extent % n != 0 {
            return Err(IrError::Type {
                op: "chunk".into(),
                scope: self.scope(),
                msg: format!(
                    "axis {axis} of {} does not split into {n}",
                    self.ty(x).shape
                ),
            });
        }
        self.split(x, axis, &vec![extent / n; n])
    }

    /// Concatenation along `axis`.
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId, IrError> {
        self.op(Op::Concat { axis }, xs)
    }

    /// Nearest-neighbour upsampling of a channels-last image.
    pub fn upsample_nearest(&mut self, x: NodeId, scale: usize) -> Result<NodeId, IrError> {
        self.op(Op::UpsampleNearest { scale }, &[x])
    }

    /// The patches of a `kernel`-sized convolution over a channels-last
    /// image (see [`Op::Im2col`]).
    pub fn im2col(
        &mut self,
        x: NodeId,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<NodeId, IrError> {
        self.op(
            Op::Im2col {
                kernel,
                stride,
                padding,
            },
            &[x],
        )
    }

    /// The dynamic fp8 quantization scale of `x` for `dtype`:
    /// `max(amax, 1e-12) / max_finite(dtype)`, f32 `[1]` over the whole
    /// tensor, or one per row of the last axis (x's shape with the last dim 1)
    /// when `per_row`.
    pub fn dynamic_scale(
        &mut self,
        x: NodeId,
        dtype: DType,
        per_row: bool,
    ) -> Result<NodeId, IrError> {
        self.op(Op::DynamicScale { dtype, per_row }, &[x])
    }

    /// `x · (1 / scale)` rounded, saturating, to the fp8 `dtype` (see
    /// [`Op::Quantize`]); `scale` is f32 `[1]` or per row (as [`GraphBuilder::dynamic_scale`] makes it).
    pub fn quantize(&mut self, x: NodeId, scale: NodeId, dtype: DType) -> Result<NodeId, IrError> {
        self.op(Op::Quantize(dtype), &[x, scale])
    }

    /// A linear over fp8 operands: `(xq · wqᵀ) · x_scale · w_scale (+ bias)`,
    /// producing `out`. `xq` is `[.., K]` with `x_scale` `[1]` or `[.., 1]`;
    /// `wq` is `[N, K]` with `w_scale` `[1]` or `[N, 1]`; the bias is `out[N]`.
    pub fn scaled_linear(
        &mut self,
        xq: NodeId,
        x_scale: NodeId,
        wq: NodeId,
        w_scale: NodeId,
        bias: Option<NodeId>,
        out: DType,
    ) -> Result<NodeId, IrError> {
        let mut operands = vec![xq, x_scale, wq, w_scale];
        operands.extend(bias);
        self.op(Op::ScaledLinear { out }, &operands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_op_and_scope() {
        let mut b = GraphBuilder::new();
        b.push_scope("blocks.0");
        b.push_scope("attn");
        let x = b.input("x", DType::F32, [2, 8]).unwrap();
        let w = b.weight("blocks.0.attn.w", DType::F32, [4, 6]).unwrap();
        let err = b.linear(x, w, None).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("linear in `blocks.0.attn`"), "{text}");
        b.pop_scope();
        assert_eq!(b.scope(), "blocks.0");
    }

    #[test]
    fn split_and_chunk() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [2, 12]).unwrap();
        let parts = b.split(x, 1, &[3, 3, 6]).unwrap();
        assert_eq!(b.shape(parts[2]), &[2, 6]);
        assert!(b.split(x, 1, &[3, 3]).is_err());
        assert_eq!(b.chunk(x, 1, 4).unwrap().len(), 4);
        assert!(b.chunk(x, 1, 5).is_err());
    }

    #[test]
    fn empty_inputs_are_rejected() {
        let mut b = GraphBuilder::new();
        let err = b.input("x", DType::F32, [2, 0]).unwrap_err().to_string();
        assert!(err.contains("zero-sized"), "{err}");
    }

    #[test]
    fn finish_requires_outputs() {
        let mut b = GraphBuilder::new();
        b.input("x", DType::F32, [1]).unwrap();
        assert_eq!(b.finish().unwrap_err(), IrError::NoOutputs);
    }
}
