//! The FLUX.1 transformer (diffusers' `FluxTransformer2DModel`) built in the IR.
//!
//! The graph follows diffusers 0.42's forward op by op — including its
//! redundancies (each AdaLayerNorm applies its own SiLU to the same `temb`;
//! every single-stream block concatenates text and image tokens and splits
//! them again) — so the unoptimised graph is a faithful transcription and the
//! passes, not the builder, remove what is redundant. Weights are graph inputs
//! named exactly as in diffusers checkpoints; module structure is kept in node
//! scopes (`transformer_blocks.3.attn`).
//!
//! Graph inputs (B = batch, N = image tokens, T = text tokens, dtype = model dtype):
//!
//! | input | shape | dtype |
//! | --- | --- | --- |
//! | `hidden_states` | `[B, N, in_channels]` | model |
//! | `encoder_hidden_states` | `[B, T, joint_attention_dim]` | model |
//! | `pooled_projections` | `[B, pooled_projection_dim]` | model |
//! | `timestep` | `[B]` (in 0..1, scaled ×1000 inside) | model |
//! | `guidance` (dev only) | `[B]` (scaled ×1000 inside) | model |
//! | `img_ids` | `[N, axes]` | f32 |
//! | `txt_ids` | `[T, axes]` | f32 |
//!
//! Output `sample`: `[B, N, out_channels]`.
//!
//! A denoising loop runs the transformer N times with the same weights and
//! conditioning inputs known before the loop (every step's timestep, the
//! guidance, the pooled embedding), so everything computed from them alone
//! — `temb` and every block's modulation vectors, `linear(silu(temb))` over
//! 6.4 GB of FLUX.1 weights per step — can be computed once for all steps.
//! [`build_conditioning`] is that part for `steps` steps at once (inputs
//! `timestep` and `guidance` `[steps·B]`, step-major, and
//! `pooled_projections` `[B, P]`; output `modulation` `[steps·B, width]`),
//! and [`build_transformer_step`] the rest, which takes one step's rows as
//! input `modulation` `[B, width]` instead of `pooled_projections`,
//! `timestep` and `guidance`. [`modulation_width`] is `width`: every
//! AdaLayerNorm's vectors side by side, in the order the blocks use them.

use fluxc_ir::{BinaryOp, DType, Graph, GraphBuilder, IrError, NodeId, TimestepParams};

use crate::config::{MissingSection, TransformerConfig};
use crate::ModelConfig;

/// Epsilon of every LayerNorm and RMSNorm in FLUX.1.
const NORM_EPS: f32 = 1e-6;

/// Width of the sinusoidal timestep projection (diffusers' `Timesteps(256)`).
const TIMESTEP_CHANNELS: usize = 256;

/// Builds the full transformer forward for `cfg` (which must be validated;
/// a config without `[transformer]` or `shapes.text_tokens` is an
/// [`IrError::Invalid`]).
pub fn build_transformer(cfg: &ModelConfig) -> Result<Graph, IrError> {
    build(cfg, false)
}

/// The transformer forward with the modulation vectors as input
/// `modulation` `[B, modulation_width]` (see the module documentation).
pub fn build_transformer_step(cfg: &ModelConfig) -> Result<Graph, IrError> {
    build(cfg, true)
}

fn build(cfg: &ModelConfig, modulation_input: bool) -> Result<Graph, IrError> {
    let mut f = Flux::for_config(cfg)?;
    let t = f.t;
    let sample = f.forward(modulation_input)?;
    // The blocks read the `modulation` input's columns in the order
    // `build_conditioning` writes them, all of them.
    if let Modulation::Input { next, .. } = f.modulation {
        if next != modulation_width(t) {
            return Err(IrError::Invalid(format!(
                "the forward read {next} modulation columns of {}",
                modulation_width(t)
            )));
        }
    }
    f.b.output("sample", sample)?;
    f.b.finish()
}

/// Width of all modulation vectors of one forward: 6 per AdaLayerNormZero
/// (two per double block), 3 per single block, 2 for `norm_out`, each
/// `hidden_size` wide.
pub fn modulation_width(t: &TransformerConfig) -> usize {
    (12 * t.num_layers + 3 * t.num_single_layers + 2) * t.hidden_size
}

/// `temb` and every modulation vector for `steps` steps at once (see the
/// module documentation): the rows of output `modulation` are step-major,
/// row `s·B + b` the one step s's forward reads for image b.
pub fn build_conditioning(cfg: &ModelConfig, steps: usize) -> Result<Graph, IrError> {
    if steps == 0 {
        return Err(IrError::Invalid("conditioning for 0 steps".into()));
    }
    let mut f = Flux::for_config(cfg)?;
    let (pooled, timestep, guidance) = f.conditioning_inputs(steps)?;
    let temb = f.time_text_embed(timestep, guidance, pooled, steps)?;
    f.modulation = Modulation::Computed { temb };
    let mut parts = Vec::new();
    for (scope, chunks) in modulation_layout(f.t) {
        f.b.push_scope(scope);
        parts.push(f.modulation_linear(chunks)?);
        f.b.pop_scope();
    }
    let all = f.b.concat(&parts, 1)?;
    f.b.output("modulation", all)?;
    f.b.finish()
}

/// Every AdaLayerNorm's scope and number of vectors, in the order the
/// forward uses them (the layout of the `modulation` rows).
fn modulation_layout(t: &TransformerConfig) -> Vec<(String, usize)> {
    let mut layout = Vec::new();
    for i in 0..t.num_layers {
        layout.push((format!("transformer_blocks.{i}.norm1"), 6));
        layout.push((format!("transformer_blocks.{i}.norm1_context"), 6));
    }
    for i in 0..t.num_single_layers {
        layout.push((format!("single_transformer_blocks.{i}.norm"), 3));
    }
    layout.push(("norm_out".into(), 2));
    layout
}

/// Builder state: the graph under construction plus the figures every
/// module needs.
struct Flux<'a> {
    b: GraphBuilder,
    t: &'a TransformerConfig,
    dtype: DType,
    batch: usize,
    image_tokens: usize,
    text_tokens: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    /// Where the modulation vectors come from.
    modulation: Modulation,
}

/// Where the AdaLayerNorms' modulation vectors come from.
enum Modulation {
    /// Not set yet (the forward sets it before the first block).
    Unset,
    /// `linear(silu(temb))` of each AdaLayerNorm.
    Computed { temb: NodeId },
    /// Slices of the graph input `modulation`, `next` the first column
    /// not yet used.
    Input { all: NodeId, next: usize },
}

/// The values threaded through the blocks.
struct Streams {
    /// Image tokens `[B, N, hidden]`.
    image: NodeId,
    /// Text tokens `[B, T, hidden]`.
    text: NodeId,
}

impl<'a> Flux<'a> {
    /// The builder for `cfg` (a config without `[transformer]` or
    /// `shapes.text_tokens` is an [`IrError::Invalid`]).
    fn for_config(cfg: &'a ModelConfig) -> Result<Self, IrError> {
        let invalid = |e: MissingSection| IrError::Invalid(e.to_string());
        let t = cfg.transformer().map_err(invalid)?;
        let text_tokens = cfg.text_tokens().map_err(invalid)?;
        Ok(Flux::new(cfg, t, text_tokens))
    }

    /// The inputs the conditioning is computed from, for `steps` steps at
    /// once: `pooled_projections` `[B, P]`, then `timestep` and (with a
    /// guidance embedding) `guidance`, `[steps·B]` step-major.
    fn conditioning_inputs(
        &mut self,
        steps: usize,
    ) -> Result<(NodeId, NodeId, Option<NodeId>), IrError> {
        let (dt, rows) = (self.dtype, steps * self.batch);
        let pooled = self.b.input(
            "pooled_projections",
            dt,
            [self.batch, self.t.pooled_projection_dim],
        )?;
        let timestep = self.b.input("timestep", dt, [rows])?;
        let guidance = if self.t.guidance_embeds {
            Some(self.b.input("guidance", dt, [rows])?)
        } else {
            None
        };
        Ok((pooled, timestep, guidance))
    }

    fn new(cfg: &ModelConfig, t: &'a TransformerConfig, text_tokens: usize) -> Self {
        Flux {
            b: GraphBuilder::new(),
            t,
            dtype: cfg.model.dtype.ir(),
            batch: cfg.shapes.batch,
            image_tokens: cfg.image_tokens(),
            text_tokens,
            hidden: t.hidden_size,
            heads: t.num_attention_heads,
            head_dim: t.attention_head_dim,
            modulation: Modulation::Unset,
        }
    }

    fn forward(&mut self, modulation_input: bool) -> Result<NodeId, IrError> {
        let t = self.t;
        let (batch, n, txt) = (self.batch, self.image_tokens, self.text_tokens);
        let axes = t.axes_dims_rope.len();
        let dt = self.dtype;

        let hidden_states = self
            .b
            .input("hidden_states", dt, [batch, n, t.in_channels])?;
        let encoder_hidden_states = self.b.input(
            "encoder_hidden_states",
            dt,
            [batch, txt, t.joint_attention_dim],
        )?;
        // Inputs and the first nodes in the order of diffusers' forward.
        let conditioning = if modulation_input {
            let all = self
                .b
                .input("modulation", dt, [batch, modulation_width(t)])?;
            self.modulation = Modulation::Input { all, next: 0 };
            None
        } else {
            Some(self.conditioning_inputs(1)?)
        };
        let img_ids = self.b.input("img_ids", DType::F32, [n, axes])?;
        let txt_ids = self.b.input("txt_ids", DType::F32, [txt, axes])?;

        let image = self.linear("x_embedder", hidden_states, self.hidden)?;
        if let Some((pooled, timestep, guidance)) = conditioning {
            let temb = self.time_text_embed(timestep, guidance, pooled, 1)?;
            self.modulation = Modulation::Computed { temb };
        }
        let text = self.linear("context_embedder", encoder_hidden_states, self.hidden)?;

        self.b.push_scope("pos_embed");
        let ids = self.b.concat(&[txt_ids, img_ids], 0)?;
        let rope = self.b.rope_table(ids, &t.axes_dims_rope, t.rope_theta)?;
        self.b.pop_scope();

        let mut streams = Streams { image, text };
        for i in 0..t.num_layers {
            self.b.push_scope(format!("transformer_blocks.{i}"));
            streams = self.double_block(streams, rope)?;
            self.b.pop_scope();
        }
        for i in 0..t.num_single_layers {
            self.b.push_scope(format!("single_transformer_blocks.{i}"));
            streams = self.single_block(streams, rope)?;
            self.b.pop_scope();
        }

        // AdaLayerNormContinuous: note diffusers' (scale, shift) order.
        self.b.push_scope("norm_out");
        let [scale, shift] = self.modulation_params::<2>()?;
        let normed = self.b.layer_norm(streams.image, None, NORM_EPS)?;
        let image = self.modulate(normed, shift, scale)?;
        self.b.pop_scope();
        self.linear("proj_out", image, self.t.out_channels())
    }

    /// `CombinedTimestep(Guidance)TextProjEmbeddings` of `steps` steps at
    /// once: the conditioning vector `temb` `[steps·B, hidden]`. The pooled
    /// embedding's part, one row per image, is added to every step's rows
    /// (the same adds in the same order as one step's).
    fn time_text_embed(
        &mut self,
        timestep: NodeId,
        guidance: Option<NodeId>,
        pooled: NodeId,
        steps: usize,
    ) -> Result<NodeId, IrError> {
        self.b.push_scope("time_text_embed");
        let mut temb = self.timestep_embedder("timestep_embedder", timestep)?;
        if let Some(g) = guidance {
            let g = self.timestep_embedder("guidance_embedder", g)?;
            temb = self.b.add(temb, g)?;
        }
        self.b.push_scope("text_embedder");
        let p = self.linear("linear_1", pooled, self.hidden)?;
        let p = self.b.silu(p)?;
        let p = self.linear("linear_2", p, self.hidden)?;
        self.b.pop_scope();
        let temb = if steps == 1 {
            self.b.add(temb, p)?
        } else {
            let (batch, hidden) = (self.batch, self.hidden);
            let temb = self.b.reshape(temb, [steps, batch, hidden])?;
            let p = self.b.reshape(p, [1, batch, hidden])?;
            let temb = self.b.add(temb, p)?;
            self.b.reshape(temb, [steps * batch, hidden])?
        };
        self.b.pop_scope();
        Ok(temb)
    }

    /// `t·1000` → sinusoidal projection → `TimestepEmbedding` MLP.
    fn timestep_embedder(&mut self, module: &str, t: NodeId) -> Result<NodeId, IrError> {
        let scaled = self.b.mul_scalar(t, 1000.0)?;
        let proj = self.b.timestep_embedding(
            scaled,
            TimestepParams {
                dim: TIMESTEP_CHANNELS,
                flip_sin_to_cos: true,
                downscale_freq_shift: 0.0.into(),
                scale: 1.0.into(),
                max_period: 10000.0.into(),
            },
        )?;
        let proj = self.b.cast(proj, self.dtype)?;
        self.b.push_scope(module);
        let h = self.linear("linear_1", proj, self.hidden)?;
        let h = self.b.silu(h)?;
        let h = self.linear("linear_2", h, self.hidden)?;
        self.b.pop_scope();
        Ok(h)
    }

    /// `FluxTransformerBlock`: joint attention over text and image tokens with
    /// separate weights per stream, then per-stream MLPs.
    fn double_block(&mut self, s: Streams, rope: NodeId) -> Result<Streams, IrError> {
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] =
            self.ada_norm_params::<6>("norm1")?;
        let [c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp] =
            self.ada_norm_params::<6>("norm1_context")?;
        let norm_image = self.norm_modulate("norm1", s.image, shift_msa, scale_msa)?;
        let norm_text = self.norm_modulate("norm1_context", s.text, c_shift_msa, c_scale_msa)?;

        self.b.push_scope("attn");
        let q = self.head_projection("to_q", norm_image, Some("norm_q"))?;
        let k = self.head_projection("to_k", norm_image, Some("norm_k"))?;
        let v = self.head_projection("to_v", norm_image, None)?;
        let cq = self.head_projection("add_q_proj", norm_text, Some("norm_added_q"))?;
        let ck = self.head_projection("add_k_proj", norm_text, Some("norm_added_k"))?;
        let cv = self.head_projection("add_v_proj", norm_text, None)?;
        let q = self.b.concat(&[cq, q], 1)?;
        let k = self.b.concat(&[ck, k], 1)?;
        let v = self.b.concat(&[cv, v], 1)?;
        let joint = self.rope_attention(q, k, v, rope)?;
        let txt = self.text_tokens;
        let total = self.b.shape(joint)[1];
        let text_attn = self.b.slice(joint, 1, 0, txt)?;
        let image_attn = self.b.slice(joint, 1, txt, total)?;
        let image_attn = self.linear("to_out.0", image_attn, self.hidden)?;
        let text_attn = self.linear("to_add_out", text_attn, self.hidden)?;
        self.b.pop_scope();

        let image = self.gated_residual(s.image, gate_msa, image_attn)?;
        let norm_image = self.norm_modulate("norm2", image, shift_mlp, scale_mlp)?;
        let ff = self.feed_forward("ff", norm_image)?;
        let image = self.gated_residual(image, gate_mlp, ff)?;
        let image = self.clip_f16(image)?;

        let text = self.gated_residual(s.text, c_gate_msa, text_attn)?;
        let norm_text = self.norm_modulate("norm2_context", text, c_shift_mlp, c_scale_mlp)?;
        let ff = self.feed_forward("ff_context", norm_text)?;
        let text = self.gated_residual(text, c_gate_mlp, ff)?;
        let text = self.clip_f16(text)?;
        Ok(Streams { image, text })
    }

    /// `FluxSingleTransformerBlock`: one stream over `[text, image]` with
    /// attention and MLP in parallel, one output projection over both.
    fn single_block(&mut self, s: Streams, rope: NodeId) -> Result<Streams, IrError> {
        let joint = self.b.concat(&[s.text, s.image], 1)?;
        let [shift, scale, gate] = self.ada_norm_params::<3>("norm")?;
        let normed = self.norm_modulate("norm", joint, shift, scale)?;

        // diffusers runs the MLP projection first; the order of these
        // independent ops does not matter, and building q, k, v first gives
        // their weights the order of BFL's fused `linear1` (q, k, v, mlp).
        self.b.push_scope("attn");
        let q = self.head_projection("to_q", normed, Some("norm_q"))?;
        let k = self.head_projection("to_k", normed, Some("norm_k"))?;
        let v = self.head_projection("to_v", normed, None)?;
        let attn = self.rope_attention(q, k, v, rope)?;
        self.b.pop_scope();
        let mlp = self.linear("proj_mlp", normed, self.t.mlp_hidden())?;
        let mlp = self.b.gelu_tanh(mlp)?;

        let both = self.b.concat(&[attn, mlp], 2)?;
        let out = self.linear("proj_out", both, self.hidden)?;
        let joint = self.gated_residual(joint, gate, out)?;
        let joint = self.clip_f16(joint)?;
        let txt = self.text_tokens;
        let total = self.b.shape(joint)[1];
        Ok(Streams {
            text: self.b.slice(joint, 1, 0, txt)?,
            image: self.b.slice(joint, 1, txt, total)?,
        })
    }

    /// The modulation vectors of an AdaLayerNormZero(-Single) `module`:
    /// [`Self::modulation_params`] in its scope.
    fn ada_norm_params<const N: usize>(&mut self, module: &str) -> Result<[NodeId; N], IrError> {
        self.b.push_scope(module);
        let chunks = self.modulation_params::<N>()?;
        self.b.pop_scope();
        Ok(chunks)
    }

    /// The current scope's `N` modulation vectors `[B, hidden]`: its
    /// `linear(silu(temb))` chunked, or the next `N·hidden` columns of the
    /// `modulation` input.
    fn modulation_params<const N: usize>(&mut self) -> Result<[NodeId; N], IrError> {
        let width = N * self.hidden;
        let emb = match self.modulation {
            Modulation::Input { all, next } => {
                self.modulation = Modulation::Input {
                    all,
                    next: next + width,
                };
                self.b.slice(all, 1, next, next + width)?
            }
            _ => self.modulation_linear(N)?,
        };
        self.chunks::<N>(emb)
    }

    /// `linear(silu(temb))` with `chunks·hidden` outputs in the current
    /// scope (`{scope}.linear`).
    fn modulation_linear(&mut self, chunks: usize) -> Result<NodeId, IrError> {
        let Modulation::Computed { temb } = self.modulation else {
            return Err(IrError::Invalid("a modulation linear without temb".into()));
        };
        let emb = self.b.silu(temb)?;
        self.linear("linear", emb, chunks * self.hidden)
    }

    /// `LayerNorm(x) · (1 + scale[:, None]) + shift[:, None]` (no affine, eps 1e-6).
    fn norm_modulate(
        &mut self,
        module: &str,
        x: NodeId,
        shift: NodeId,
        scale: NodeId,
    ) -> Result<NodeId, IrError> {
        self.b.push_scope(module);
        let normed = self.b.layer_norm(x, None, NORM_EPS)?;
        let out = self.modulate(normed, shift, scale)?;
        self.b.pop_scope();
        Ok(out)
    }

    /// `x · (1 + scale[:, None]) + shift[:, None]` for `[B, hidden]` vectors.
    fn modulate(&mut self, x: NodeId, shift: NodeId, scale: NodeId) -> Result<NodeId, IrError> {
        let scale = self.per_token(scale)?;
        let scale = self.b.add_scalar(scale, 1.0)?;
        let shift = self.per_token(shift)?;
        let x = self.b.mul(x, scale)?;
        self.b.add(x, shift)
    }

    /// `residual + gate[:, None] · x`.
    fn gated_residual(
        &mut self,
        residual: NodeId,
        gate: NodeId,
        x: NodeId,
    ) -> Result<NodeId, IrError> {
        let gate = self.per_token(gate)?;
        let gated = self.b.mul(gate, x)?;
        self.b.add(residual, gated)
    }

    /// `[B, C]` → `[B, 1, C]` so it broadcasts over tokens.
    fn per_token(&mut self, v: NodeId) -> Result<NodeId, IrError> {
        let c = self.b.shape(v)[1];
        self.b.reshape(v, [self.batch, 1, c])
    }

    /// Projection to `[B, S, heads, head_dim]`, optionally RMS-normed per head
    /// with the weight `{scope}.{norm}.weight`.
    fn head_projection(
        &mut self,
        module: &str,
        x: NodeId,
        norm: Option<&str>,
    ) -> Result<NodeId, IrError> {
        let y = self.linear(module, x, self.heads * self.head_dim)?;
        let seq = self.b.shape(y)[1];
        let y = self
            .b
            .reshape(y, [self.batch, seq, self.heads, self.head_dim])?;
        let Some(norm) = norm else {
            return Ok(y);
        };
        self.b.push_scope(norm);
        let w = self.weight("weight", [self.head_dim])?;
        let y = self.b.rms_norm(y, Some(w), NORM_EPS)?;
        self.b.pop_scope();
        Ok(y)
    }

    /// RoPE on q and k, attention, heads merged back: `[B, S, hidden]`.
    fn rope_attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        rope: NodeId,
    ) -> Result<NodeId, IrError> {
        let q = self.b.apply_rope(q, rope)?;
        let k = self.b.apply_rope(k, rope)?;
        let o = self.b.attention(q, k, v)?;
        let seq = self.b.shape(o)[1];
        self.b
            .reshape(o, [self.batch, seq, self.heads * self.head_dim])
    }

    /// diffusers' `FeedForward(activation_fn="gelu-approximate")`:
    /// `net.0.proj` → GELU(tanh) → `net.2`.
    fn feed_forward(&mut self, module: &str, x: NodeId) -> Result<NodeId, IrError> {
        self.b.push_scope(module);
        let h = self.linear("net.0.proj", x, self.t.mlp_hidden())?;
        let h = self.b.gelu_tanh(h)?;
        let out = self.linear("net.2", h, self.hidden)?;
        self.b.pop_scope();
        Ok(out)
    }

    /// diffusers clips fp16 activations to ±65504 after each block.
    fn clip_f16(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        if self.dtype != DType::F16 {
            return Ok(x);
        }
        let x = self.b.scalar(BinaryOp::Max, x, -65504.0)?;
        self.b.scalar(BinaryOp::Min, x, 65504.0)
    }

    /// `nn.Linear` with bias: weights `{scope}.{module}.weight` `[out, in]`
    /// and `.bias` `[out]`.
    fn linear(&mut self, module: &str, x: NodeId, out_features: usize) -> Result<NodeId, IrError> {
        let in_features = *self.b.shape(x).last().unwrap_or(&0);
        self.b.push_scope(module);
        let w = self.weight("weight", [out_features, in_features])?;
        let bias = self.weight("bias", [out_features])?;
        let y = self.b.linear(x, w, Some(bias))?;
        self.b.pop_scope();
        Ok(y)
    }

    /// A weight named after the current scope: `{scope}.{leaf}`.
    fn weight<const R: usize>(&mut self, leaf: &str, shape: [usize; R]) -> Result<NodeId, IrError> {
        let name = format!("{}.{leaf}", self.b.scope());
        self.b.weight(&name, self.dtype, shape)
    }

    /// `x.chunk(N, dim=1)` as an array.
    fn chunks<const N: usize>(&mut self, x: NodeId) -> Result<[NodeId; N], IrError> {
        let parts = self.b.chunk(x, 1, N)?;
        parts
            .try_into()
            .map_err(|_| IrError::Invalid(format!("chunk did not give {N} parts")))
    }
}
