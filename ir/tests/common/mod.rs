//! Helpers shared by the interpreter tests: a graph builder that remembers
//! what to feed, deterministic pseudo-random data, exact comparison.

#![allow(dead_code)]

use std::collections::HashMap;

use fluxc_ir::interp::{self, Tensor};
use fluxc_ir::{DType, GraphBuilder, NodeId, Shape};

/// A builder plus the tensors to feed its inputs.
#[derive(Default)]
pub struct Harness {
    pub b: GraphBuilder,
    pub feeds: HashMap<String, Tensor>,
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    /// An f32 activation input fed with `data`.
    pub fn input(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> NodeId {
        self.input_typed(name, DType::F32, shape, data)
    }

    /// An activation input of any dtype fed with `data` (the interpreter
    /// rounds fed values to the dtype).
    pub fn input_typed(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: Vec<f32>,
    ) -> NodeId {
        let id = self.b.input(name, dtype, shape).unwrap();
        self.feeds
            .insert(name.to_string(), Tensor::new(shape, data).unwrap());
        id
    }

    /// An f32 weight input fed with `data`.
    pub fn weight(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> NodeId {
        let id = self.b.weight(name, DType::F32, shape).unwrap();
        self.feeds
            .insert(name.to_string(), Tensor::new(shape, data).unwrap());
        id
    }

    /// Marks `outs` as outputs, verifies, runs, and returns them in order.
    pub fn run_all(mut self, outs: &[NodeId]) -> Vec<Tensor> {
        for (i, &o) in outs.iter().enumerate() {
            self.b.output(&format!("out{i}"), o).unwrap();
        }
        let graph = self.b.finish().unwrap();
        let mut values = interp::run(&graph, &self.feeds).unwrap();
        (0..outs.len())
            .map(|i| values.remove(&format!("out{i}")).unwrap())
            .collect()
    }

    /// Marks `out` as the only output, verifies, runs, and returns it.
    pub fn run(self, out: NodeId) -> Tensor {
        self.run_all(&[out]).remove(0)
    }
}

/// Deterministic pseudo-random values in `[-1, 1)` (an LCG; no dependencies).
pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Asserts shape and exact (bitwise-equal-as-f32) values.
pub fn assert_exact(actual: &Tensor, shape: &[usize], expected: &[f32]) {
    assert_eq!(actual.shape, Shape::from(shape), "shape");
    assert_eq!(actual.data, expected);
}
