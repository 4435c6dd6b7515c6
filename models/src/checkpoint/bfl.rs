//! The name map from diffusers' `FluxTransformer2DModel` tensor names to the
//! original Black Forest Labs (BFL) FLUX checkpoint.
//!
//! It mirrors diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
//! (in `loaders/single_file_utils.py`), read backwards: for each diffusers
//! name, which BFL tensor it comes from and how. Most are renames; the fused
//! projections are sliced ([`WeightSource::Rows`]): a double block's
//! `img_attn.qkv` / `txt_attn.qkv` into thirds of `hidden_size` rows, a single
//! block's `linear1` into q, k, v (`hidden_size` rows each) and the MLP input
//! (`mlp_hidden` rows); and the final modulation is stored shift-then-scale
//! where diffusers wants scale-then-shift ([`WeightSource::SwapHalves`]).
//! Single-file checkpoints from ComfyUI-style bundles put the transformer
//! under [`BFL_PREFIX`], which the loader strips.

use fluxc_artifact::WeightSource;

/// The prefix under which bundled single-file checkpoints store the BFL
/// transformer tensors; stripped when reading.
pub const BFL_PREFIX: &str = "model.diffusion_model.";

/// Top-level linear layers (`.weight` and `.bias`): diffusers stem, BFL stem.
const TOP_LINEARS: &[(&str, &str)] = &[
    (
        "time_text_embed.timestep_embedder.linear_1",
        "time_in.in_layer",
    ),
    (
        "time_text_embed.timestep_embedder.linear_2",
        "time_in.out_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_1",
        "vector_in.in_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_2",
        "vector_in.out_layer",
    ),
    (
        "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.in_layer",
    ),
    (
        "time_text_embed.guidance_embedder.linear_2",
        "guidance_in.out_layer",
    ),
    ("context_embedder", "txt_in"),
    ("x_embedder", "img_in"),
    ("proj_out", "final_layer.linear"),
];

/// The final AdaLN modulation: diffusers stem, BFL stem (halves swapped).
const FINAL_MODULATION: (&str, &str) = ("norm_out.linear", "final_layer.adaLN_modulation.1");

/// Double-block linear layers renamed as a whole: diffusers stem, BFL stem.
const DOUBLE_LINEARS: &[(&str, &str)] = &[
    ("norm1.linear", "img_mod.lin"),
    ("norm1_context.linear", "txt_mod.lin"),
    ("attn.to_out.0", "img_attn.proj"),
    ("attn.to_add_out", "txt_attn.proj"),
    ("ff.net.0.proj", "img_mlp.0"),
    ("ff.net.2", "img_mlp.2"),
    ("ff_context.net.0.proj", "txt_mlp.0"),
    ("ff_context.net.2", "txt_mlp.2"),
];

/// Double-block projections sliced out of a fused qkv: diffusers stem, BFL
/// stem, which third.
const DOUBLE_QKV: &[(&str, &str, usize)] = &[
    ("attn.to_q", "img_attn.qkv", 0),
    ("attn.to_k", "img_attn.qkv", 1),
    ("attn.to_v", "img_attn.qkv", 2),
    ("attn.add_q_proj", "txt_attn.qkv", 0),
    ("attn.add_k_proj", "txt_attn.qkv", 1),
    ("attn.add_v_proj", "txt_attn.qkv", 2),
];

/// Double-block RMSNorm scales: full diffusers tail, full BFL tail.
const DOUBLE_NORMS: &[(&str, &str)] = &[
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
    ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
];

/// Single-block linear layers renamed as a whole: diffusers stem, BFL stem.
const SINGLE_LINEARS: &[(&str, &str)] =
    &[("norm.linear", "modulation.lin"), ("proj_out", "linear2")];

/// Single-block RMSNorm scales: full diffusers tail, full BFL tail.
const SINGLE_NORMS: &[(&str, &str)] = &[
    ("attn.norm_q.weight", "norm.query_norm.scale"),
    ("attn.norm_k.weight", "norm.key_norm.scale"),
];

/// The single block's fused input projection.
const SINGLE_FUSED: &str = "linear1";

/// How the diffusers tensor `diffusers_name` of `FluxTransformer2DModel` is
/// derived from the original BFL checkpoint, for a model of width
/// `hidden_size` whose single blocks have an MLP of `mlp_hidden` features
/// (3072 and 12288 for FLUX.1-dev and -schnell). `None` for names the
/// transformer does not have. Names are given without [`BFL_PREFIX`].
pub fn bfl_source(
    diffusers_name: &str,
    hidden_size: usize,
    mlp_hidden: usize,
) -> Option<WeightSource> {
    if let Some(rest) = diffusers_name.strip_prefix("transformer_blocks.") {
        let (i, tail) = block_index(rest)?;
        return double_block(i, tail, hidden_size);
    }
    if let Some(rest) = diffusers_name.strip_prefix("single_transformer_blocks.") {
        let (i, tail) = block_index(rest)?;
        return single_block(i, tail, hidden_size, mlp_hidden);
    }
    top_level(diffusers_name)
}

/// Whether stored tensor names are those of a BFL checkpoint (possibly under
/// [`BFL_PREFIX`]).
pub(crate) fn looks_like_bfl<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| {
        let n = strip_bfl_prefix(n);
        n.starts_with("double_blocks.") || n.starts_with("single_blocks.") || n == "img_in.weight"
    })
}

/// `name` without [`BFL_PREFIX`].
pub(crate) fn strip_bfl_prefix(name: &str) -> &str {
    name.strip_prefix(BFL_PREFIX).unwrap_or(name)
}

/// `"12.attn.to_q.weight"` → `(12, "attn.to_q.weight")`; the index must be
/// written as Python writes it (no sign, no leading zeros).
pub(super) fn block_index(rest: &str) -> Option<(usize, &str)> {
    let (idx, tail) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    (i.to_string() == idx).then_some((i, tail))
}

/// `"a.b.weight"` → `("a.b", "weight")`, for `weight` and `bias` only.
pub(super) fn split_param(name: &str) -> Option<(&str, &str)> {
    let (stem, param) = name.rsplit_once('.')?;
    matches!(param, "weight" | "bias").then_some((stem, param))
}

/// The second element of the pair whose first is `key`.
pub(super) fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn top_level(name: &str) -> Option<WeightSource> {
    let (stem, param) = split_param(name)?;
    if stem == FINAL_MODULATION.0 {
        let bfl = format!("{}.{param}", FINAL_MODULATION.1);
        return Some(WeightSource::tensor(bfl).swap_halves());
    }
    let bfl = lookup(TOP_LINEARS, stem)?;
    Some(WeightSource::tensor(format!("{bfl}.{param}")))
}

fn double_block(i: usize, tail: &str, hidden: usize) -> Option<WeightSource> {
    let stored = |bfl: &str| WeightSource::tensor(format!("double_blocks.{i}.{bfl}"));
    if let Some(bfl) = lookup(DOUBLE_NORMS, tail) {
        return Some(stored(bfl));
    }
    let (stem, param) = split_param(tail)?;
    if let Some(bfl) = lookup(DOUBLE_LINEARS, stem) {
        return Some(stored(&format!("{bfl}.{param}")));
    }
    let (_, fused, third) = DOUBLE_QKV.iter().find(|(d, _, _)| *d == stem)?;
    Some(stored(&format!("{fused}.{param}")).rows(third.saturating_mul(hidden), hidden))
}

fn single_block(i: usize, tail: &str, hidden: usize, mlp: usize) -> Option<WeightSource> {
    let stored = |bfl: &str| WeightSource::tensor(format!("single_blocks.{i}.{bfl}"));
    if let Some(bfl) = lookup(SINGLE_NORMS, tail) {
        return Some(stored(bfl));
    }
    let (stem, param) = split_param(tail)?;
    if let Some(bfl) = lookup(SINGLE_LINEARS, stem) {
        return Some(stored(&format!("{bfl}.{param}")));
    }
    // linear1 stacks q, k, v (hidden rows each) and the MLP input (mlp rows).
    let (start, len) = match stem {
        "attn.to_q" => (0, hidden),
        "attn.to_k" => (hidden, hidden),
        "attn.to_v" => (hidden.saturating_mul(2), hidden),
        "proj_mlp" => (hidden.saturating_mul(3), mlp),
        _ => return None,
    };
    Some(stored(&format!("{SINGLE_FUSED}.{param}")).rows(start, len))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const H: usize = 3072;
    const M: usize = 12288;

    fn t(name: &str) -> WeightSource {
        WeightSource::tensor(name)
    }

    /// Every diffusers tensor of a FLUX transformer with `double` double
    /// blocks and `single` single blocks (guidance-distilled, like -dev),
    /// with its expected BFL source, written out by hand.
    fn expected_map(double: usize, single: usize) -> BTreeMap<String, WeightSource> {
        let mut m = BTreeMap::new();
        let mut put = |d: String, s: WeightSource| assert!(m.insert(d, s).is_none());
        for p in ["weight", "bias"] {
            for (d, b) in [
                (
                    "time_text_embed.timestep_embedder.linear_1",
                    "time_in.in_layer",
                ),
                (
                    "time_text_embed.timestep_embedder.linear_2",
                    "time_in.out_layer",
                ),
                (
                    "time_text_embed.text_embedder.linear_1",
                    "vector_in.in_layer",
                ),
                (
                    "time_text_embed.text_embedder.linear_2",
                    "vector_in.out_layer",
                ),
                (
                    "time_text_embed.guidance_embedder.linear_1",
                    "guidance_in.in_layer",
                ),
                (
                    "time_text_embed.guidance_embedder.linear_2",
                    "guidance_in.out_layer",
                ),
                ("context_embedder", "txt_in"),
                ("x_embedder", "img_in"),
                ("proj_out", "final_layer.linear"),
            ] {
                put(format!("{d}.{p}"), t(&format!("{b}.{p}")));
            }
            put(
                format!("norm_out.linear.{p}"),
                t(&format!("final_layer.adaLN_modulation.1.{p}")).swap_halves(),
            );
            for i in 0..double {
                let d = |s: &str| format!("transformer_blocks.{i}.{s}.{p}");
                let b = |s: &str| t(&format!("double_blocks.{i}.{s}.{p}"));
                put(d("norm1.linear"), b("img_mod.lin"));
                put(d("norm1_context.linear"), b("txt_mod.lin"));
                put(d("attn.to_q"), b("img_attn.qkv").rows(0, H));
                put(d("attn.to_k"), b("img_attn.qkv").rows(H, H));
                put(d("attn.to_v"), b("img_attn.qkv").rows(2 * H, H));
                put(d("attn.add_q_proj"), b("txt_attn.qkv").rows(0, H));
                put(d("attn.add_k_proj"), b("txt_attn.qkv").rows(H, H));
                put(d("attn.add_v_proj"), b("txt_attn.qkv").rows(2 * H, H));
                put(d("attn.to_out.0"), b("img_attn.proj"));
                put(d("attn.to_add_out"), b("txt_attn.proj"));
                put(d("ff.net.0.proj"), b("img_mlp.0"));
                put(d("ff.net.2"), b("img_mlp.2"));
                put(d("ff_context.net.0.proj"), b("txt_mlp.0"));
                put(d("ff_context.net.2"), b("txt_mlp.2"));
            }
            for i in 0..single {
                let d = |s: &str| format!("single_transformer_blocks.{i}.{s}.{p}");
                let b = |s: &str| t(&format!("single_blocks.{i}.{s}.{p}"));
                put(d("norm.linear"), b("modulation.lin"));
                put(d("attn.to_q"), b("linear1").rows(0, H));
                put(d("attn.to_k"), b("linear1").rows(H, H));
                put(d("attn.to_v"), b("linear1").rows(2 * H, H));
                put(d("proj_mlp"), b("linear1").rows(3 * H, M));
                put(d("proj_out"), b("linear2"));
            }
        }
        for i in 0..double {
            let d = |s: &str| format!("transformer_blocks.{i}.attn.{s}.weight");
            let b = |s: &str| t(&format!("double_blocks.{i}.{s}.scale"));
            put(d("norm_q"), b("img_attn.norm.query_norm"));
            put(d("norm_k"), b("img_attn.norm.key_norm"));
            put(d("norm_added_q"), b("txt_attn.norm.query_norm"));
            put(d("norm_added_k"), b("txt_attn.norm.key_norm"));
        }
        for i in 0..single {
            let d = |s: &str| format!("single_transformer_blocks.{i}.attn.{s}.weight");
            let b = |s: &str| t(&format!("single_blocks.{i}.norm.{s}.scale"));
            put(d("norm_q"), b("query_norm"));
            put(d("norm_k"), b("key_norm"));
        }
        m
    }

    #[test]
    fn maps_every_diffusers_name() {
        let expected = expected_map(3, 12);
        // 20 top-level tensors, 32 per double block, 14 per single block.
        assert_eq!(expected.len(), 20 + 3 * 32 + 12 * 14);
        for (name, source) in &expected {
            assert_eq!(bfl_source(name, H, M).as_ref(), Some(source), "{name}");
        }
    }

    #[test]
    fn reads_every_bfl_tensor_and_tiles_fused_ones() {
        let expected = expected_map(2, 2);
        let mut used: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for source in expected.values() {
            match source {
                WeightSource::Rows { of, start, len } => {
                    let name = of.tensor_names()[0].to_string();
                    used.entry(name).or_default().push((*start, *len));
                }
                other => {
                    let name = other.tensor_names()[0].to_string();
                    assert!(used.insert(name.clone(), vec![]).is_none(), "{name}");
                }
            }
        }
        // 20 top-level, 24 per double block, 8 per single block.
        assert_eq!(used.len(), 20 + 2 * 24 + 2 * 8);
        for (name, mut ranges) in used.into_iter().filter(|(_, r)| !r.is_empty()) {
            ranges.sort();
            let mut next = 0;
            for (start, len) in ranges {
                assert_eq!(start, next, "{name}");
                next += len;
            }
            let total = if name.contains("linear1") {
                3 * H + M
            } else {
                3 * H
            };
            assert_eq!(next, total, "{name}");
        }
    }

    #[test]
    fn uses_the_given_widths() {
        assert_eq!(
            bfl_source("transformer_blocks.7.attn.add_v_proj.bias", 8, 32),
            Some(t("double_blocks.7.txt_attn.qkv.bias").rows(16, 8))
        );
        assert_eq!(
            bfl_source("single_transformer_blocks.37.proj_mlp.weight", 8, 32),
            Some(t("single_blocks.37.linear1.weight").rows(24, 32))
        );
    }

    #[test]
    fn rejects_unknown_names() {
        for name in [
            "",
            "pos_embed.weight",
            "norm_out.norm.weight",
            "x_embedder",
            "x_embedder.scale",
            "transformer_blocks.0.attn.norm_q.bias",
            "transformer_blocks.0.attn.to_qkv.weight",
            "transformer_blocks.01.attn.to_q.weight",
            "transformer_blocks.+1.attn.to_q.weight",
            "transformer_blocks.x.attn.to_q.weight",
            "transformer_blocks.attn.to_q.weight",
            "single_transformer_blocks.0.attn.norm_added_q.weight",
            "single_transformer_blocks.0.attn.to_out.0.weight",
            "single_transformer_blocks.0.norm.linear",
            "double_blocks.0.img_attn.qkv.weight",
            "model.diffusion_model.img_in.weight",
        ] {
            assert_eq!(bfl_source(name, H, M), None, "{name}");
        }
    }

    #[test]
    fn recognises_bfl_names() {
        let bfl = |names: &[&str]| looks_like_bfl(names.iter().copied());
        assert!(bfl(&["img_in.weight"]));
        assert!(bfl(&["double_blocks.0.img_mod.lin.weight"]));
        assert!(bfl(&[
            "vae.x",
            "model.diffusion_model.single_blocks.3.linear1.bias"
        ]));
        assert!(!bfl(&[
            "x_embedder.weight",
            "transformer_blocks.0.attn.to_q.weight"
        ]));
        assert!(!bfl(&[]));
        let names: BTreeSet<&str> = ["model.diffusion_model.img_in.weight", "img_in.bias"].into();
        let stripped: Vec<&str> = names.iter().map(|n| strip_bfl_prefix(n)).collect();
        assert_eq!(stripped, vec!["img_in.bias", "img_in.weight"]);
    }
}
