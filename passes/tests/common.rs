//! Helpers shared by the pass tests: deterministic pseudo-random inputs and
//! before/after interpretation.

#![allow(dead_code)]

use std::collections::HashMap;

use fluxc_ir::interp::{self, Tensor};
use fluxc_ir::{Graph, Op};

/// A small deterministic generator (64-bit LCG), values in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value.
    pub fn next_value(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Random values for every input of `graph`.
pub fn random_inputs(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Lcg(seed);
    graph
        .inputs()
        .into_iter()
        .map(|id| {
            let node = graph.node(id);
            let Op::Input { name, .. } = &node.op else {
                unreachable!()
            };
            let n = node.ty.shape.numel();
            let data = (0..n).map(|_| rng.next_value()).collect();
            (
                name.clone(),
                Tensor::new(node.ty.shape.clone(), data).unwrap(),
            )
        })
        .collect()
}

/// Runs `graph` and returns output `name`.
pub fn run(graph: &Graph, inputs: &HashMap<String, Tensor>, name: &str) -> Tensor {
    interp::run(graph, inputs).unwrap()[name].clone()
}

/// Nodes of `graph` whose op kind is `kind`.
pub fn count(graph: &Graph, kind: &str) -> usize {
    fluxc_ir::GraphStats::of(graph).ops(kind)
}
