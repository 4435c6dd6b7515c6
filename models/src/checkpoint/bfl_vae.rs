//! The name map from diffusers' `AutoencoderKL` decoder tensor names to the
//! original FLUX VAE checkpoint (Black Forest Labs' `ae.safetensors`, the
//! LDM layout of the original latent-diffusion code).
//!
//! It mirrors diffusers' `convert_ldm_vae_checkpoint` (in
//! `loaders/single_file_utils.py`), read backwards and for the decoder only
//! (fluxc does not build the encoder). Everything is a rename except the mid
//! block's attention projections, which the original stores as 1×1
//! convolutions `[C, C, 1, 1]` where diffusers has linears `[C, C]`
//! ([`WeightSource::Reshape`]; same elements, same order):
//!
//! | diffusers (`decoder.` …) | original (`decoder.` …) |
//! | --- | --- |
//! | `conv_in`, `conv_out` | same |
//! | `conv_norm_out` | `norm_out` |
//! | `mid_block.resnets.{0,1}.…` | `mid.block_{1,2}.…` |
//! | `mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` | `mid.attn_1.{norm,q,k,v,proj_out}` |
//! | `up_blocks.{i}.resnets.{j}.…` | `up.{n-1-i}.block.{j}.…` |
//! | `up_blocks.{i}.upsamplers.0.conv` | `up.{n-1-i}.upsample.conv` |
//! | `….conv_shortcut` (in a resnet) | `….nin_shortcut` |
//!
//! where `n` is the number of levels: the original numbers the decoder's
//! levels from the finest (`up.0`, applied last) and diffusers in the order
//! they run (`up_blocks.0`, the coarsest). Single-file bundles store the VAE
//! under one of [`VAE_PREFIXES`], which the loader strips.

use fluxc_artifact::WeightSource;

use super::bfl::{block_index, lookup, split_param};
use super::VaeDims;

/// Prefixes under which bundled single-file checkpoints store the VAE
/// (diffusers' `LDM_VAE_KEYS`); stripped when reading.
pub const VAE_PREFIXES: [&str; 2] = ["vae.", "first_stage_model."];

/// Layers at the top of the decoder: diffusers stem, original stem.
const TOP_LAYERS: &[(&str, &str)] = &[
    ("conv_in", "conv_in"),
    ("conv_norm_out", "norm_out"),
    ("conv_out", "conv_out"),
];

/// Layers of a ResNet block: diffusers, original.
const RESNET_LAYERS: &[(&str, &str)] = &[
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("conv_shortcut", "nin_shortcut"),
];

/// Layers of the mid block's attention: diffusers, original.
const ATTENTION_LAYERS: &[(&str, &str)] = &[
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
];

/// The attention layers that are linears in diffusers and 1×1 convolutions
/// in the original.
const ATTENTION_PROJECTIONS: &[&str] = &["to_q", "to_k", "to_v", "to_out.0"];

/// How the diffusers tensor `diffusers_name` of an `AutoencoderKL` decoder
/// with `dims` is derived from the original FLUX VAE checkpoint. `None` for
/// names the decoder does not have (the encoder's included). Names are given
/// without [`VAE_PREFIXES`].
pub fn bfl_vae_source(diffusers_name: &str, dims: VaeDims) -> Option<WeightSource> {
    let rest = diffusers_name.strip_prefix("decoder.")?;
    let (stem, param) = split_param(rest)?;
    let original = original_stem(stem, dims.up_blocks)?;
    let stored = WeightSource::tensor(format!("decoder.{original}.{param}"));
    let projection = stem
        .strip_prefix("mid_block.attentions.0.")
        .is_some_and(|layer| ATTENTION_PROJECTIONS.contains(&layer));
    if projection && param == "weight" {
        let c = dims.attention_channels;
        return Some(WeightSource::Reshape {
            of: Box::new(stored),
            shape: vec![c, c],
        });
    }
    Some(stored)
}

/// Whether stored tensor names are those of an original-layout VAE
/// (possibly under one of [`VAE_PREFIXES`]).
pub(crate) fn looks_like_bfl_vae<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    const ORIGINAL_ONLY: [&str; 6] = [
        "decoder.up.",
        "decoder.mid.",
        "decoder.norm_out.",
        "encoder.down.",
        "encoder.mid.",
        "encoder.norm_out.",
    ];
    names.any(|n| {
        let n = VAE_PREFIXES
            .iter()
            .find_map(|p| n.strip_prefix(p))
            .unwrap_or(n);
        ORIGINAL_ONLY.iter().any(|start| n.starts_with(start))
    })
}

/// The original stem (without `decoder.`) of diffusers stem `stem`.
fn original_stem(stem: &str, up_blocks: usize) -> Option<String> {
    if let Some(original) = lookup(TOP_LAYERS, stem) {
        return Some(original.to_string());
    }
    if let Some(rest) = stem.strip_prefix("mid_block.") {
        return mid_block(rest);
    }
    let (i, tail) = block_index(stem.strip_prefix("up_blocks.")?)?;
    // up_blocks.i is up.(n-1-i); i ≥ n has no counterpart.
    let level = up_blocks.checked_sub(1)?.checked_sub(i)?;
    up_block(level, tail)
}

/// `resnets.{0,1}.<layer>` → `mid.block_{1,2}.<layer>`,
/// `attentions.0.<layer>` → `mid.attn_1.<layer>`.
fn mid_block(rest: &str) -> Option<String> {
    if let Some(resnet) = rest.strip_prefix("resnets.") {
        let (j, layer) = block_index(resnet)?;
        if j > 1 {
            return None;
        }
        let layer = lookup(RESNET_LAYERS, layer)?;
        return Some(format!("mid.block_{}.{layer}", j + 1));
    }
    let layer = lookup(ATTENTION_LAYERS, rest.strip_prefix("attentions.0.")?)?;
    Some(format!("mid.attn_1.{layer}"))
}

/// The tail of `up_blocks.i` → the tail of `up.{level}`.
fn up_block(level: usize, tail: &str) -> Option<String> {
    if tail == "upsamplers.0.conv" {
        return Some(format!("up.{level}.upsample.conv"));
    }
    let (j, layer) = block_index(tail.strip_prefix("resnets.")?)?;
    let layer = lookup(RESNET_LAYERS, layer)?;
    Some(format!("up.{level}.block.{j}.{layer}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const FLUX: VaeDims = VaeDims::FLUX1;

    fn t(name: &str) -> WeightSource {
        WeightSource::tensor(name)
    }

    fn reshaped(name: &str, c: usize) -> WeightSource {
        WeightSource::Reshape {
            of: Box::new(t(name)),
            shape: vec![c, c],
        }
    }

    /// Every decoder tensor of FLUX's VAE (4 levels, 3 resnets per up block,
    /// shortcuts where the channels change: up_blocks 2 and 3's first resnet)
    /// with its original source, written out by hand.
    fn expected_flux_map() -> BTreeMap<String, WeightSource> {
        let mut m = BTreeMap::new();
        let mut put = |d: String, s: WeightSource| assert!(m.insert(d, s).is_none(), "dup");
        let resnet = |d: &str, o: &str, shortcut: bool| {
            let mut layers = vec![
                ("norm1", "norm1"),
                ("conv1", "conv1"),
                ("norm2", "norm2"),
                ("conv2", "conv2"),
            ];
            if shortcut {
                layers.push(("conv_shortcut", "nin_shortcut"));
            }
            layers
                .into_iter()
                .map(|(dl, ol)| (format!("{d}.{dl}"), format!("{o}.{ol}")))
                .collect::<Vec<_>>()
        };
        for p in ["weight", "bias"] {
            let mut pairs = vec![
                ("decoder.conv_in".to_string(), "decoder.conv_in".to_string()),
                ("decoder.conv_out".into(), "decoder.conv_out".into()),
                ("decoder.conv_norm_out".into(), "decoder.norm_out".into()),
                (
                    "decoder.mid_block.attentions.0.group_norm".into(),
                    "decoder.mid.attn_1.norm".into(),
                ),
            ];
            pairs.extend(resnet(
                "decoder.mid_block.resnets.0",
                "decoder.mid.block_1",
                false,
            ));
            pairs.extend(resnet(
                "decoder.mid_block.resnets.1",
                "decoder.mid.block_2",
                false,
            ));
            for i in 0..4 {
                let o = 3 - i;
                for j in 0..3 {
                    pairs.extend(resnet(
                        &format!("decoder.up_blocks.{i}.resnets.{j}"),
                        &format!("decoder.up.{o}.block.{j}"),
                        j == 0 && i >= 2,
                    ));
                }
                if i < 3 {
                    pairs.push((
                        format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                        format!("decoder.up.{o}.upsample.conv"),
                    ));
                }
            }
            for (d, o) in pairs {
                put(format!("{d}.{p}"), t(&format!("{o}.{p}")));
            }
            for (d, o) in [
                ("to_q", "q"),
                ("to_k", "k"),
                ("to_v", "v"),
                ("to_out.0", "proj_out"),
            ] {
                let d = format!("decoder.mid_block.attentions.0.{d}.{p}");
                let o = format!("decoder.mid.attn_1.{o}.{p}");
                put(
                    d,
                    if p == "weight" {
                        reshaped(&o, 512)
                    } else {
                        t(&o)
                    },
                );
            }
        }
        m
    }

    #[test]
    fn maps_every_flux_decoder_name() {
        let expected = expected_flux_map();
        // conv_in, conv_out, norm_out, 2 mid resnets (8 each), attention (10),
        // 12 up resnets (8 each) + 2 shortcuts (2 each), 3 upsamplers (2 each).
        assert_eq!(expected.len(), 6 + 16 + 10 + 12 * 8 + 4 + 6);
        for (name, source) in &expected {
            assert_eq!(bfl_vae_source(name, FLUX).as_ref(), Some(source), "{name}");
        }
    }

    #[test]
    fn reads_each_original_tensor_once() {
        let expected = expected_flux_map();
        let mut read: Vec<&str> = expected.values().flat_map(|s| s.tensor_names()).collect();
        let n = read.len();
        read.sort_unstable();
        read.dedup();
        assert_eq!(read.len(), n, "two diffusers names read one tensor");
        assert!(read.iter().all(|r| r.starts_with("decoder.")));
    }

    #[test]
    fn reverses_the_levels_by_their_count() {
        let dims = VaeDims {
            up_blocks: 2,
            attention_channels: 8,
        };
        assert_eq!(
            bfl_vae_source("decoder.up_blocks.0.resnets.4.conv_shortcut.bias", dims),
            Some(t("decoder.up.1.block.4.nin_shortcut.bias"))
        );
        assert_eq!(
            bfl_vae_source("decoder.up_blocks.1.resnets.0.norm1.weight", dims),
            Some(t("decoder.up.0.block.0.norm1.weight"))
        );
        assert_eq!(
            bfl_vae_source("decoder.up_blocks.2.resnets.0.norm1.weight", dims),
            None
        );
        assert_eq!(
            bfl_vae_source("decoder.mid_block.attentions.0.to_out.0.weight", dims),
            Some(reshaped("decoder.mid.attn_1.proj_out.weight", 8))
        );
    }

    #[test]
    fn rejects_unknown_names() {
        for name in [
            "",
            "decoder",
            "decoder.conv_in",
            "decoder.conv_in.scale",
            "decoder.norm_out.weight",
            "decoder.mid.block_1.norm1.weight",
            "decoder.mid_block.resnets.2.norm1.weight",
            "decoder.mid_block.resnets.01.norm1.weight",
            "decoder.mid_block.attentions.1.to_q.weight",
            "decoder.mid_block.attentions.0.to_out.1.weight",
            "decoder.mid_block.attentions.0.norm.weight",
            "decoder.up_blocks.0.resnets.0.nin_shortcut.weight",
            "decoder.up_blocks.0.upsamplers.1.conv.weight",
            "decoder.up_blocks.x.resnets.0.conv1.weight",
            "decoder.up_blocks.4.resnets.0.conv1.weight",
            "encoder.conv_in.weight",
            "encoder.down_blocks.0.resnets.0.conv1.weight",
            "post_quant_conv.weight",
            "vae.decoder.conv_in.weight",
            "transformer_blocks.0.attn.to_q.weight",
        ] {
            assert_eq!(bfl_vae_source(name, FLUX), None, "{name}");
        }
    }

    #[test]
    fn recognises_original_vae_names() {
        let vae = |names: &[&str]| looks_like_bfl_vae(names.iter().copied());
        assert!(vae(&["decoder.up.0.block.0.conv1.weight"]));
        assert!(vae(&[
            "decoder.conv_in.weight",
            "decoder.mid.attn_1.q.weight"
        ]));
        assert!(vae(&["encoder.down.0.downsample.conv.weight"]));
        assert!(vae(&["vae.decoder.norm_out.bias"]));
        assert!(vae(&["first_stage_model.encoder.mid.block_1.norm1.weight"]));
        assert!(!vae(&[
            "decoder.conv_in.weight",
            "decoder.up_blocks.0.resnets.0.conv1.weight",
            "decoder.mid_block.attentions.0.to_q.weight",
            "decoder.conv_norm_out.weight",
        ]));
        assert!(!vae(&["model.diffusion_model.img_in.weight"]));
        assert!(!vae(&[]));
    }
}
