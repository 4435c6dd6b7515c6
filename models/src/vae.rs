//! The FLUX VAE decoder (the decoder of diffusers' `AutoencoderKL`, as
//! `vae.decode(z)` runs it) built in the IR.
//!
//! The graph follows diffusers 0.42's `Decoder.forward` op by op, in
//! channels-last layout (the IR's `Conv2d`, `GroupNorm` and
//! `UpsampleNearest` are NHWC; conv weights keep PyTorch's
//! `[Cout, Cin, KH, KW]`, so checkpoints load as stored):
//!
//! ```text
//! z ─ conv_in (3×3) ─ mid_block ─ up_blocks.0 … up_blocks.{n-1} ─ conv_norm_out ─ SiLU ─ conv_out (3×3) ─ sample
//! mid_block   = resnets.0 ─ attentions.0 ─ resnets.1      (no attention when mid_block_add_attention is false)
//! up_blocks.i = resnets.0 … resnets.{layers_per_block} ─ upsamplers.0 (all but the last block)
//! resnet      = x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))   (x through a 1×1 conv_shortcut when channels change)
//! upsampler   = conv (3×3) of nearest ×2 upsampling
//! attention   = x + to_out.0(one-head attention(to_q, to_k, to_v of group_norm(x)))   over the H·W pixels
//! ```
//!
//! Every GroupNorm has `norm_num_groups` groups and eps 1e-6; the up blocks
//! run from the coarsest level (`block_out_channels` reversed). There are no
//! quant/post-quant convolutions (FLUX has none). diffusers' identities are
//! left out: dropout (0, eval), the divisions by `output_scale_factor` and
//! `rescale_output_factor` (both 1). The mid attention has one head as wide
//! as the channels (`attention_head_dim = C`), scale `1/√C`. Weights are graph
//! inputs named exactly as in diffusers' `AutoencoderKL` checkpoints
//! (`decoder.up_blocks.0.resnets.1.conv2.weight`); module structure is kept in
//! node scopes.
//!
//! Graph input (B = batch, dtype = model dtype): `z` `[B, height/8, width/8,
//! latent_channels]` (NHWC, the latents after the pipeline's
//! `latents / scaling_factor + shift_factor`). Output `sample`:
//! `[B, height, width, out_channels]` (NHWC).

use fluxc_ir::{DType, Graph, GraphBuilder, IrError, NodeId};

use crate::config::{MissingSection, VaeConfig};
use crate::ModelConfig;

/// Epsilon of every GroupNorm in the decoder (diffusers' `resnet_eps`).
const NORM_EPS: f32 = 1e-6;

/// Builds `vae.decode(z)` for `cfg` (which must be validated; a config
/// without `[vae]` is an [`IrError::Invalid`]).
pub fn build_vae_decoder(cfg: &ModelConfig) -> Result<Graph, IrError> {
    let vae = cfg.vae().map_err(invalid)?;
    let mut d = Decoder {
        b: GraphBuilder::new(),
        vae,
        dtype: cfg.model.dtype.ir(),
    };
    let (height, width) = cfg.latent_size();
    let z = d.b.input(
        "z",
        d.dtype,
        [cfg.shapes.batch, height, width, vae.latent_channels],
    )?;
    let sample = d.forward(z)?;
    d.b.output("sample", sample)?;
    d.b.finish()
}

fn invalid(e: MissingSection) -> IrError {
    IrError::Invalid(e.to_string())
}

/// Builder state: the graph under construction and the VAE's figures.
struct Decoder<'a> {
    b: GraphBuilder,
    vae: &'a VaeConfig,
    dtype: DType,
}

impl Decoder<'_> {
    /// `Decoder.forward` on latents `z` `[B, h, w, latent]`.
    fn forward(&mut self, z: NodeId) -> Result<NodeId, IrError> {
        self.b.push_scope("decoder");
        let top = self.vae.mid_channels();
        let mut x = self.conv("conv_in", z, top, 3)?;
        x = self.mid_block(x)?;
        let levels: Vec<usize> = self.vae.block_out_channels.iter().rev().copied().collect();
        for (i, &channels) in levels.iter().enumerate() {
            self.b.push_scope(format!("up_blocks.{i}"));
            x = self.up_block(x, channels, i + 1 < levels.len())?;
            self.b.pop_scope();
        }
        x = self.group_norm("conv_norm_out", x)?;
        x = self.b.silu(x)?;
        let sample = self.conv("conv_out", x, self.vae.out_channels, 3)?;
        self.b.pop_scope();
        Ok(sample)
    }

    /// `UNetMidBlock2D`: resnet, attention (if enabled), resnet; the width
    /// stays the same.
    fn mid_block(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        self.b.push_scope("mid_block");
        let channels = self.channels(x);
        let mut x = self.resnet("resnets.0", x, channels)?;
        if self.vae.mid_block_add_attention {
            x = self.attention("attentions.0", x)?;
        }
        x = self.resnet("resnets.1", x, channels)?;
        self.b.pop_scope();
        Ok(x)
    }

    /// `UpDecoderBlock2D` (in the current scope): `layers_per_block + 1`
    /// resnets to `channels`, then, unless it is the last block, a ×2
    /// upsampler.
    fn up_block(&mut self, x: NodeId, channels: usize, upsample: bool) -> Result<NodeId, IrError> {
        let mut x = x;
        for j in 0..=self.vae.layers_per_block {
            x = self.resnet(&format!("resnets.{j}"), x, channels)?;
        }
        if upsample {
            self.b.push_scope("upsamplers.0");
            x = self.b.upsample_nearest(x, 2)?;
            x = self.conv("conv", x, channels, 3)?;
            self.b.pop_scope();
        }
        Ok(x)
    }

    /// `ResnetBlock2D` without a time embedding: `shortcut(x) + conv2(SiLU(
    /// norm2(conv1(SiLU(norm1(x))))))`, where the shortcut is a 1×1
    /// `conv_shortcut` when the channels change and the identity otherwise.
    fn resnet(&mut self, module: &str, x: NodeId, out: usize) -> Result<NodeId, IrError> {
        self.b.push_scope(module);
        let mut h = self.group_norm("norm1", x)?;
        h = self.b.silu(h)?;
        h = self.conv("conv1", h, out, 3)?;
        h = self.group_norm("norm2", h)?;
        h = self.b.silu(h)?;
        h = self.conv("conv2", h, out, 3)?;
        let shortcut = if self.channels(x) == out {
            x
        } else {
            self.conv("conv_shortcut", x, out, 1)?
        };
        let y = self.b.add(shortcut, h)?;
        self.b.pop_scope();
        Ok(y)
    }

    /// The mid block's `Attention` (`_from_deprecated_attn_block`, one head
    /// of all `C` channels, residual connection): GroupNorm, the pixels as a
    /// `[B, H·W, C]` sequence through `to_q`/`to_k`/`to_v`, attention with
    /// scale `1/√C`, `to_out.0`, back to `[B, H, W, C]`, plus `x`.
    fn attention(&mut self, module: &str, x: NodeId) -> Result<NodeId, IrError> {
        self.b.push_scope(module);
        let [batch, height, width, c] = self.nhwc(x)?;
        let pixels = height * width;
        let h = self.group_norm("group_norm", x)?;
        let h = self.b.reshape(h, [batch, pixels, c])?;
        let mut heads = Vec::with_capacity(3);
        for projection in ["to_q", "to_k", "to_v"] {
            let p = self.linear(projection, h, c)?;
            heads.push(self.b.reshape(p, [batch, pixels, 1, c])?);
        }
        let o = self.b.attention(heads[0], heads[1], heads[2])?;
        let o = self.b.reshape(o, [batch, pixels, c])?;
        let o = self.linear("to_out.0", o, c)?;
        let o = self.b.reshape(o, [batch, height, width, c])?;
        let y = self.b.add(o, x)?;
        self.b.pop_scope();
        Ok(y)
    }

    /// `nn.GroupNorm(norm_num_groups, C, eps=1e-6)` over NHWC `x`: weights
    /// `{scope}.{module}.weight` and `.bias` `[C]`.
    fn group_norm(&mut self, module: &str, x: NodeId) -> Result<NodeId, IrError> {
        let c = self.channels(x);
        self.b.push_scope(module);
        let w = self.weight("weight", [c])?;
        let bias = self.weight("bias", [c])?;
        let y = self
            .b
            .group_norm(x, w, bias, self.vae.norm_num_groups, NORM_EPS)?;
        self.b.pop_scope();
        Ok(y)
    }

    /// `nn.Conv2d(C, out, k, padding=k/2)` with bias over NHWC `x`: weights
    /// `{scope}.{module}.weight` `[out, C, k, k]` and `.bias` `[out]`.
    fn conv(&mut self, module: &str, x: NodeId, out: usize, k: usize) -> Result<NodeId, IrError> {
        let c = self.channels(x);
        self.b.push_scope(module);
        let w = self.weight("weight", [out, c, k, k])?;
        let bias = self.weight("bias", [out])?;
        let y = self.b.conv2d(x, w, Some(bias), 1, k / 2)?;
        self.b.pop_scope();
        Ok(y)
    }

    /// `nn.Linear` with bias: weights `{scope}.{module}.weight` `[out, in]`
    /// and `.bias` `[out]`.
    fn linear(&mut self, module: &str, x: NodeId, out: usize) -> Result<NodeId, IrError> {
        let c = self.channels(x);
        self.b.push_scope(module);
        let w = self.weight("weight", [out, c])?;
        let bias = self.weight("bias", [out])?;
        let y = self.b.linear(x, w, Some(bias))?;
        self.b.pop_scope();
        Ok(y)
    }

    /// A weight named after the current scope: `{scope}.{leaf}`.
    fn weight<const R: usize>(&mut self, leaf: &str, shape: [usize; R]) -> Result<NodeId, IrError> {
        let name = format!("{}.{leaf}", self.b.scope());
        self.b.weight(&name, self.dtype, shape)
    }

    /// The last (channel) extent of `x`.
    fn channels(&self, x: NodeId) -> usize {
        self.b.shape(x).last().copied().unwrap_or(0)
    }

    /// The four extents of an NHWC value.
    fn nhwc(&self, x: NodeId) -> Result<[usize; 4], IrError> {
        self.b.shape(x).try_into().map_err(|_| {
            IrError::Invalid(format!(
                "expected an NHWC image in `{}`, got shape {:?}",
                self.b.scope(),
                self.b.shape(x)
            ))
        })
    }
}
