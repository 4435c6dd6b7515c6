//! Concatenations written in place. A kernel that only concatenates
//! tensors copies every byte of its parts once more; when each part is
//! written whole by one earlier step and read by nothing but the
//! concatenation, and the parts are contiguous blocks of the result (every
//! dim before the concat axis is 1, e.g. `[1, S, H, D]` along the
//! sequence), each part's producer can write its block of the result
//! directly: the copy goes, and the part's buffer is the result's bytes at
//! the part's offset. Every part must start on the arena's alignment, as a
//! buffer of its own would. A part that is itself a concatenation written
//! in place has no step writing it whole, so it keeps its copy (one level
//! of placement: a part's buffer is always a concatenation's own). (FLUX's
//! double blocks: the text and image rows of q8 and k8, each from its own
//! norm/rope/quantize kernel.)

use std::collections::HashMap;

use fluxc_ir::{Graph, Op};

use crate::buffers::Buf;
use crate::kernels::Recipe;
use crate::lower::PendingStep;
use crate::memory;

/// Where an in-place part lives: the concatenation's value and the part's
/// first byte in it.
pub type InPlace = HashMap<Buf, (Buf, u64)>;

/// Drops every copy-only concatenation of `steps` whose parts can be
/// written in place (see the module docs), and returns the remaining steps
/// with where each such part lives.
pub fn in_place(graph: &Graph, steps: Vec<PendingStep>) -> (Vec<PendingStep>, InPlace) {
    let mut placed = InPlace::new();
    let mut dropped = vec![false; steps.len()];
    // Which steps write and read each value, and the graph's outputs, once.
    let mut writers: HashMap<Buf, Vec<usize>> = HashMap::new();
    let mut readers: HashMap<Buf, Vec<usize>> = HashMap::new();
    for (t, step) in steps.iter().enumerate() {
        for (map, bufs) in [(&mut writers, step.writes()), (&mut readers, step.reads())] {
            for b in bufs {
                let at = map.entry(b).or_default();
                if at.last() != Some(&t) {
                    at.push(t);
                }
            }
        }
    }
    let outputs: Vec<_> = graph.outputs().iter().map(|(_, o)| *o).collect();
    for (s, step) in steps.iter().enumerate() {
        let Some(concat) = copy_only_concat(step) else {
            continue;
        };
        let Op::Concat { axis } = graph.node(concat).op else {
            continue;
        };
        let dims = graph.ty(concat).shape.dims();
        let parts = graph.operands(concat);
        let contiguous = dims[..axis].iter().all(|&d| d == 1);
        let distinct = parts
            .iter()
            .enumerate()
            .all(|(i, p)| !parts[..i].contains(p));
        let placeable = |part| {
            let b = Buf::Node(part);
            !matches!(graph.node(part).op, Op::Input { .. } | Op::Reshape(_))
                && !outputs.contains(&part)
                && !placed.contains_key(&b)
                && graph.ty(part).dtype == graph.ty(concat).dtype
                && matches!(writers.get(&b).map(Vec::as_slice), Some(&[w]) if w < s && !dropped[w])
                && readers.get(&b).map(Vec::as_slice) == Some(&[s][..])
        };
        let bytes = graph.ty(concat).dtype.size_bytes() as u64;
        let offsets: Vec<u64> = parts
            .iter()
            .scan(0, |at, &p| {
                let here = *at;
                *at += graph.ty(p).shape.numel() as u64 * bytes;
                Some(here)
            })
            .collect();
        // Kernels store in 16-byte vectors and cuBLASLt wants aligned
        // outputs: a part starts where a buffer of its own could.
        let aligned = offsets.iter().all(|&o| o % memory::ALIGN == 0);
        if !contiguous || !distinct || !aligned || !parts.iter().all(|&p| placeable(p)) {
            continue;
        }
        for (&part, offset) in parts.iter().zip(offsets) {
            placed.insert(Buf::Node(part), (Buf::Node(concat), offset));
        }
        dropped[s] = true;
    }
    let steps = steps
        .into_iter()
        .zip(dropped)
        .filter_map(|(step, drop)| (!drop).then_some(step))
        .collect();
    (steps, placed)
}

/// The concatenation a kernel step computes and nothing else, if it is one.
fn copy_only_concat(step: &PendingStep) -> Option<fluxc_ir::NodeId> {
    let PendingStep::Kernel(k) = step else {
        return None;
    };
    match &k.recipe {
        Recipe::Pointwise {
            nodes,
            outputs,
            tensor_scale: None,
        } if nodes.len() == 1 && outputs == nodes => Some(nodes[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fluxc_ir::{DType, GraphBuilder};

    use super::*;
    use crate::kernels;

    /// `concat(concat(a, b), c)` with a kernel per value: the inner
    /// concatenation is written in place, and then, having no step that
    /// writes it whole, is not itself placed in the outer one (which keeps
    /// its copy), so no part lives two levels deep.
    #[test]
    fn a_concatenation_written_in_place_is_not_placed_again() {
        let mut g = GraphBuilder::new();
        let [a, b, c] = ["x", "y", "z"].map(|name| {
            let x = g.input(name, DType::BF16, [1, 8, 64]).unwrap();
            g.add_scalar(x, 1.0).unwrap()
        });
        let inner = g.concat(&[a, b], 1).unwrap();
        let outer = g.concat(&[inner, c], 1).unwrap();
        g.output("out", outer).unwrap();
        let graph = g.finish().unwrap();
        let kernel = |n| PendingStep::Kernel(kernels::pointwise(&graph, &[n], &[n]).unwrap());
        let steps: Vec<PendingStep> = [a, b, c, inner, outer].map(kernel).into();
        let (kept, placed) = in_place(&graph, steps);
        assert_eq!(kept.len(), 4, "only the inner copy goes");
        let at = |n| placed.get(&Buf::Node(n)).copied();
        assert_eq!(at(a), Some((Buf::Node(inner), 0)));
        assert_eq!(at(b), Some((Buf::Node(inner), 8 * 64 * 2)));
        assert_eq!(at(inner), None);
        assert_eq!(at(c), None);
    }
}
