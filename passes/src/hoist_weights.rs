//! Hoists weight-only computations out of the forward, to load time.
//!
//! Passes rewrite weights with ordinary ops: q/k/v fusion stacks weights with
//! `concat`, conv1x1-as-mm views a conv weight with `reshape`, conv-as-im2col
//! reorders one with `permute` and `reshape`, fp8 insertion
//! computes `dynamic_scale` and `quantize` of weights. Such a computation
//! depends on weights only, so doing it in every forward would be waste.
//! This pass replaces each one the runtime can do at load time by a new
//! weight input whose derivation (a [`WeightSource`] over the original
//! weight names) is returned alongside the graph: the artifact's manifest
//! records it and the loader applies it to the checkpoint's tensors. Weight
//! computations with other ops stay in the graph.
//!
//! Hoisted weights are named after their derivation, e.g.
//! `transformer_blocks.0.attn.{to_q,to_k,to_v}.weight`, so dumps stay
//! readable and names are deterministic.

use std::collections::{BTreeMap, HashMap};

use fluxc_artifact::{Fp8Format, WeightSource};
use fluxc_ir::{DType, Graph, InputKind, IrError, NodeId, Op};

/// Replaces load-time-computable weight subgraphs by derived weight inputs.
/// Returns the derivation of every weight input of the resulting graph
/// (original weights map to themselves).
pub fn hoist_weights(graph: &mut Graph) -> Result<BTreeMap<String, WeightSource>, IrError> {
    let order = graph.topo_order()?;
    let mut sources: HashMap<NodeId, WeightSource> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let source = match &node.op {
            Op::Input {
                name,
                kind: InputKind::Weight,
            } => Some(WeightSource::tensor(name)),
            _ => derive(graph, id, &sources),
        };
        if let Some(source) = source {
            sources.insert(id, source);
        }
    }

    // The frontier: derived values read by something that is not itself
    // derived (or named as an output).
    let outputs: Vec<NodeId> = graph.outputs().iter().map(|(_, id)| *id).collect();
    let frontier: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| sources.contains_key(id) && !graph.node(*id).op.is_weight())
        .filter(|id| {
            outputs.contains(id)
                || graph
                    .users(*id)
                    .iter()
                    .any(|(u, _)| !sources.contains_key(u))
        })
        .collect();
    let mut derived: BTreeMap<String, WeightSource> = BTreeMap::new();
    for id in frontier {
        let source = sources[&id].clone();
        let name = display_name(&source);
        let node = graph.node(id).clone();
        let weight = match graph.find_input(&name) {
            Some(existing) => existing,
            None => graph.add_input(
                &name,
                InputKind::Weight,
                node.ty.dtype,
                node.ty.shape.clone(),
                &node.scope,
            )?,
        };
        graph.replace_all_uses(id, weight)?;
        derived.insert(name, source);
    }
    graph.remove_dead_nodes();

    let mut table = BTreeMap::new();
    for id in graph.inputs() {
        if let Op::Input {
            name,
            kind: InputKind::Weight,
        } = &graph.node(id).op
        {
            let source = derived
                .remove(name)
                .unwrap_or_else(|| WeightSource::tensor(name));
            table.insert(name.clone(), source);
        }
    }
    Ok(table)
}

/// The derivation of node `id` if it is a load-time op over derived values.
fn derive(
    graph: &Graph,
    id: NodeId,
    sources: &HashMap<NodeId, WeightSource>,
) -> Option<WeightSource> {
    let operands = graph.operands(id);
    let of = |i: usize| operands.get(i).and_then(|o| sources.get(o)).cloned();
    match &graph.node(id).op {
        Op::Concat { axis: 0 } => {
            let parts: Option<Vec<WeightSource>> = (0..operands.len()).map(of).collect();
            Some(WeightSource::Concat { parts: parts? })
        }
        Op::Slice {
            axis: 0,
            start,
            end,
        } => Some(of(0)?.rows(*start, end - start)),
        Op::Reshape(shape) => Some(WeightSource::Reshape {
            of: Box::new(of(0)?),
            shape: shape.dims().to_vec(),
        }),
        Op::Permute(perm) => Some(WeightSource::Permute {
            of: Box::new(of(0)?),
            perm: perm.clone(),
        }),
        Op::DynamicScale { dtype, per_row } => Some(WeightSource::Fp8Scale {
            of: Box::new(of(0)?),
            format: fp8_format(*dtype)?,
            per_row: *per_row,
        }),
        Op::Quantize(dtype) => {
            // Only the quantization by the value's own dynamic scale is a
            // load-time transform the loader knows.
            let value = of(0)?;
            let format = fp8_format(*dtype)?;
            match of(1)? {
                WeightSource::Fp8Scale {
                    of: scaled,
                    format: f,
                    per_row,
                } if *scaled == value && f == format => Some(WeightSource::Fp8Quantize {
                    of: Box::new(value),
                    format,
                    per_row,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn fp8_format(dtype: DType) -> Option<Fp8Format> {
    match dtype {
        DType::F8E4M3 => Some(Fp8Format::E4m3),
        DType::F8E5M2 => Some(Fp8Format::E5m2),
        _ => None,
    }
}

/// A readable, deterministic name for a derived weight.
pub fn display_name(source: &WeightSource) -> String {
    match source {
        WeightSource::Tensor { name } => name.clone(),
        WeightSource::Rows { of, start, len } => {
            format!("{}[{start}..{}]", display_name(of), start + len)
        }
        WeightSource::SwapHalves { of } => format!("swap_halves({})", display_name(of)),
        WeightSource::Concat { parts } => {
            let names: Vec<String> = parts.iter().map(display_name).collect();
            brace_join(&names)
        }
        WeightSource::Reshape { of, shape } => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("{}.view({})", display_name(of), dims.join(","))
        }
        WeightSource::Permute { of, perm } => {
            let axes: Vec<String> = perm.iter().map(usize::to_string).collect();
            format!("{}.permute({})", display_name(of), axes.join(","))
        }
        WeightSource::Fp8Quantize {
            of,
            format,
            per_row,
        } => format!(
            "{}:{}{}",
            display_name(of),
            format_name(*format),
            row_suffix(*per_row)
        ),
        WeightSource::Fp8Scale { of, per_row, .. } => {
            format!("{}:scale{}", display_name(of), row_suffix(*per_row))
        }
    }
}

fn format_name(format: Fp8Format) -> &'static str {
    match format {
        Fp8Format::E4m3 => "f8e4m3",
        Fp8Format::E5m2 => "f8e5m2",
    }
}

fn row_suffix(per_row: bool) -> &'static str {
    if per_row {
        "/row"
    } else {
        ""
    }
}

/// `a.b.x.weight`, `a.b.y.weight` → `a.b.{x,y}.weight`: the common dotted
/// prefix and suffix once, the differing middles in braces.
fn brace_join(names: &[String]) -> String {
    let split: Vec<Vec<&str>> = names.iter().map(|n| n.split('.').collect()).collect();
    let shortest = split.iter().map(Vec::len).min().unwrap_or(0);
    let prefix = (0..shortest)
        .take_while(|&i| split.iter().all(|s| s[i] == split[0][i]))
        .count();
    let suffix = (0..shortest - prefix)
        .take_while(|&i| {
            split
                .iter()
                .all(|s| s[s.len() - 1 - i] == split[0][split[0].len() - 1 - i])
        })
        .count();
    let middles: Vec<String> = split
        .iter()
        .map(|s| s[prefix..s.len() - suffix].join("."))
        .collect();
    let mut parts: Vec<String> = split[0][..prefix].iter().map(|s| s.to_string()).collect();
    parts.push(format!("{{{}}}", middles.join(",")));
    parts.extend(
        split[0][split[0].len() - suffix..]
            .iter()
            .map(|s| s.to_string()),
    );
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            brace_join(&names(&["b.0.attn.to_q.weight", "b.0.attn.to_k.weight"])),
            "b.0.attn.{to_q,to_k}.weight"
        );
        assert_eq!(
            brace_join(&names(&["s.0.attn.to_q.bias", "s.0.proj_mlp.bias"])),
            "s.0.{attn.to_q,proj_mlp}.bias"
        );
    }
}
