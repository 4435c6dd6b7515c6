//! `fluxc check model.toml`: validate the file, build the graph, verify it and
//! print what it contains and costs, and what `[passes]` will quantize to
//! fp8 (the linears' mode; whether, and how many, attentions run in fp8).

use std::fmt::Write;
use std::path::Path;

use fluxc_ir::{Graph, GraphStats};
use fluxc_models::config::{Architecture, Fp8Setting, MissingSection};
use fluxc_models::{build_graph, ModelConfig};
use fluxc_passes::fp8_attention::is_fp8_attention_candidate;

/// Runs the check and prints the summary to stdout (for a pipeline file:
/// its loop, then each model it names).
pub fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if fluxc_models::pipeline::is_pipeline_file(path) {
        return run_pipeline(path);
    }
    let cfg = ModelConfig::load(path)?;
    let graph = build_graph(&cfg)
        .map_err(|e| format!("building the graph of `{}` failed: {e}", path.display()))?;
    print!("{}", summary(&cfg, &graph)?);
    Ok(())
}

/// `fluxc check` of a pipeline file: the loop's numbers and where its
/// conditioning is computed, then the summary of its transformer and of its
/// VAE at the pipeline's shapes.
fn run_pipeline(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = fluxc_models::pipeline::PipelineConfig::load(path)?;
    let spec = cfg.spec()?;
    spec.validate()?;
    println!("{}", spec.summary());
    match &spec.conditioning {
        Some(c) => {
            let graph = build_graph(&cfg.conditioning_model())
                .map_err(|e| format!("building the pipeline's conditioning failed: {e}"))?;
            println!(
                "  conditioning     hoisted: {} steps' modulation vectors ({} wide) in one pass \
                 over {} of weights per image",
                spec.steps,
                c.width,
                si(GraphStats::of(&graph).weight_bytes as f64, "B")
            );
        }
        None => println!("  conditioning     per step ([pipeline] hoist_conditioning = false)"),
    }
    for (model, model_path) in [
        (&cfg.transformer, &cfg.transformer_path),
        (&cfg.vae, &cfg.vae_path),
    ] {
        let graph = build_graph(model).map_err(|e| {
            format!(
                "building the graph of `{}` failed: {e}",
                model_path.display()
            )
        })?;
        print!("{}", summary(model, &graph)?);
    }
    Ok(())
}

/// The text `fluxc check` prints (fails only on an unvalidated config).
pub fn summary(cfg: &ModelConfig, graph: &Graph) -> Result<String, MissingSection> {
    let stats = GraphStats::of(graph);
    let dtype = cfg.model.dtype.ir();
    let mut s = String::new();
    match cfg.model.architecture {
        Architecture::FluxTransformer => transformer_header(&mut s, cfg)?,
        Architecture::FluxVaeDecoder => vae_header(&mut s, cfg)?,
    }
    writeln!(
        s,
        "  parameters       {} ({} tensors, {} in {dtype})",
        parameters(stats.parameters),
        stats.weight_tensors,
        si(stats.weight_bytes as f64, "B"),
    )
    .unwrap();
    let count = |k: &str| stats.ops_by_kind.get(k).copied().unwrap_or(0);
    if count("conv2d") > 0 {
        writeln!(
            s,
            "  conv FLOPs       {} per forward ({} conv2d)",
            si(stats.conv_flops as f64, "FLOP"),
            count("conv2d")
        )
        .unwrap();
    }
    writeln!(
        s,
        "  GEMM FLOPs       {} per forward ({} linear)",
        si(stats.gemm_flops as f64, "FLOP"),
        count("linear") + count("matmul")
    )
    .unwrap();
    writeln!(
        s,
        "  attention FLOPs  {} per forward ({} attention)",
        si(stats.attention_flops as f64, "FLOP"),
        count("attention")
    )
    .unwrap();
    writeln!(s, "  fp8              {}", fp8_summary(cfg, graph)).unwrap();
    writeln!(
        s,
        "  nodes            {} ({} inputs, {} weights, {} ops)",
        graph.len(),
        count("input"),
        count("weight"),
        stats.compute_ops()
    )
    .unwrap();
    writeln!(s, "  ops by kind:").unwrap();
    for (kind, n) in &stats.ops_by_kind {
        if !matches!(*kind, "input" | "weight") {
            writeln!(s, "    {kind:<20} {n:>6}").unwrap();
        }
    }
    Ok(s)
}

/// What `[passes]` quantizes: `off`, or the linears' mode and what becomes
/// of attention (`dynamic-row linears; attention e4m3 per tensor (57 of 57
/// attentions: bf16, 128-wide heads)`).
fn fp8_summary(cfg: &ModelConfig, graph: &Graph) -> String {
    let passes = &cfg.passes;
    // fp8_attention is on by default and means nothing without fp8.
    if passes.fp8 == Fp8Setting::Off {
        return "off".into();
    }
    let linears = format!("{} linears", passes.fp8.name());
    if !passes.fp8_attention {
        return format!("{linears}; attention not quantized (fp8_attention = false)");
    }
    let attentions: Vec<_> = graph
        .node_ids()
        .into_iter()
        .filter(|&id| graph.node(id).op.kind_name() == "attention")
        .collect();
    let fp8 = attentions
        .iter()
        .filter(|&&id| is_fp8_attention_candidate(graph, id))
        .count();
    format!(
        "{linears}; attention e4m3 per tensor ({fp8} of {} attentions: bf16, 128-wide heads)",
        attentions.len()
    )
}

/// What the transformer is and what it runs on.
fn transformer_header(s: &mut String, cfg: &ModelConfig) -> Result<(), MissingSection> {
    let t = cfg.transformer()?;
    let shapes = &cfg.shapes;
    writeln!(
        s,
        "{}: FLUX.1 transformer, {}, {}x{} (batch {}): {} image + {} text tokens",
        cfg.model.name,
        cfg.model.dtype.ir(),
        shapes.width,
        shapes.height,
        shapes.batch,
        cfg.image_tokens(),
        cfg.text_tokens()?
    )
    .unwrap();
    writeln!(
        s,
        "  blocks           {} double + {} single, {} heads x {}, hidden {}, guidance {}",
        t.num_layers,
        t.num_single_layers,
        t.num_attention_heads,
        t.attention_head_dim,
        t.hidden_size,
        if t.guidance_embeds { "yes" } else { "no" }
    )
    .unwrap();
    Ok(())
}

/// What the VAE decoder is and what it runs on.
fn vae_header(s: &mut String, cfg: &ModelConfig) -> Result<(), MissingSection> {
    let v = cfg.vae()?;
    let shapes = &cfg.shapes;
    let (h, w) = cfg.latent_size();
    writeln!(
        s,
        "{}: FLUX VAE decoder, {}, {}x{} (batch {}): latents {w}x{h}x{} -> image {}x{}x{}",
        cfg.model.name,
        cfg.model.dtype.ir(),
        shapes.width,
        shapes.height,
        shapes.batch,
        v.latent_channels,
        shapes.width,
        shapes.height,
        v.out_channels
    )
    .unwrap();
    let levels: Vec<usize> = v.block_out_channels.iter().rev().copied().collect();
    writeln!(
        s,
        "  blocks           {} up blocks x {} resnets, channels {levels:?}, {} groups, \
         mid attention {}",
        levels.len(),
        v.layers_per_block + 1,
        v.norm_num_groups,
        if v.mid_block_add_attention {
            "yes"
        } else {
            "no"
        }
    )
    .unwrap();
    Ok(())
}

/// A parameter count the way model cards state it: `11.901 B`, `110.4 k`.
fn parameters(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.3} B", n / 1e9)
    } else {
        si(n, "")
    }
}

/// `value` with an SI prefix and three significant decimals: `11.901 G`.
fn si(value: f64, unit: &str) -> String {
    const PREFIXES: [(f64, &str); 5] =
        [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, prefix) in PREFIXES {
        if value >= scale {
            return format!("{:.3} {prefix}{unit}", value / scale);
        }
    }
    format!("{value} {unit}").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::si;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(11_901_408_320.0, "B"), "11.901 GB");
        assert_eq!(super::parameters(11_901_408_320), "11.901 B");
        assert_eq!(super::parameters(110_400), "110.400 k");
        assert_eq!(si(59_512_255_414_272.0, "FLOP"), "59.512 TFLOP");
        assert_eq!(si(12.0, ""), "12");
    }
}
