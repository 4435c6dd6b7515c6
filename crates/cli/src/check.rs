//! `fluxc check model.toml`: validate the file, build the graph, verify it and
//! print what it contains and costs.

use std::fmt::Write;
use std::path::Path;

use fluxc_ir::{Graph, GraphStats};
use fluxc_models::{flux, ModelConfig};

/// Runs the check and prints the summary to stdout.
pub fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ModelConfig::load(path)?;
    let graph = flux::build_transformer(&cfg)
        .map_err(|e| format!("building the graph of `{}` failed: {e}", path.display()))?;
    print!("{}", summary(&cfg, &graph));
    Ok(())
}

/// The text `fluxc check` prints.
pub fn summary(cfg: &ModelConfig, graph: &Graph) -> String {
    let stats = GraphStats::of(graph);
    let dtype = cfg.model.dtype.ir();
    let mut s = String::new();
    let shapes = &cfg.shapes;
    writeln!(
        s,
        "{}: FLUX.1 transformer, {dtype}, {}x{} (batch {}): {} image + {} text tokens",
        cfg.model.name,
        shapes.width,
        shapes.height,
        shapes.batch,
        cfg.image_tokens(),
        shapes.text_tokens
    )
    .unwrap();
    let t = &cfg.transformer;
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
    writeln!(
        s,
        "  parameters       {} ({} tensors, {} in {dtype})",
        parameters(stats.parameters),
        stats.weight_tensors,
        si(stats.weight_bytes as f64, "B"),
    )
    .unwrap();
    let count = |k: &str| stats.ops_by_kind.get(k).copied().unwrap_or(0);
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
    s
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
