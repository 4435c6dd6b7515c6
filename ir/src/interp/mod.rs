//! The CPU reference interpreter: the meaning of every IR op.
//!
//! It runs any graph on small inputs, computing in f32 (with f64 accumulators
//! in dot products and reductions) whatever dtypes the graph declares. Values
//! are rounded to a dtype where a conversion is explicit: when an input is
//! fed (to the input's declared dtype), at `Op::Cast`, and inside the fp8
//! ops whose rounding is their meaning (`Op::Quantize`; `Op::ScaledAttention`,
//! which models its kernel: e4m3 probabilities, a bf16 output). So an
//! all-f32 graph is interpreted exactly, and lower-precision graphs see the
//! rounding of their explicit conversions. Every pass is tested by
//! interpreting before and after it; every GPU kernel is compared against it.
//!
//! Intermediate tensors are dropped as soon as their last user has run, so
//! memory stays near the live set.

mod kernels;

use std::collections::{BTreeMap, HashMap};

use crate::{Graph, IrError, NodeId, Op, Shape};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Shape,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and elements. Fails if the counts differ.
    pub fn new(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Tensor, InterpError> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(InterpError::ElementCount {
                shape,
                len: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Shape>, value: f32) -> Tensor {
        let shape = shape.into();
        let data = vec![value; shape.numel()];
        Tensor { shape, data }
    }

    /// Relative L2 distance `‖self − reference‖ / ‖reference‖`, computed in f64.
    /// Returns infinity when shapes differ or any value is NaN.
    pub fn rel_l2(&self, reference: &Tensor) -> f64 {
        if self.shape != reference.shape {
            return f64::INFINITY;
        }
        let mut diff = 0.0f64;
        let mut norm = 0.0f64;
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            let d = a as f64 - b as f64;
            diff += d * d;
            norm += (b as f64) * (b as f64);
        }
        if diff.is_nan() || norm.is_nan() {
            return f64::INFINITY;
        }
        if norm == 0.0 {
            return if diff == 0.0 { 0.0 } else { f64::INFINITY };
        }
        (diff / norm).sqrt()
    }
}

/// Why interpretation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// The graph itself is malformed.
    #[error(transparent)]
    Ir(#[from] IrError),
    /// An input the graph declares was not supplied.
    #[error("no value supplied for graph input `{0}`")]
    MissingInput(String),
    /// An input was supplied with the wrong shape.
    #[error("graph input `{name}` expects shape {expected}, got {found}")]
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape.
        expected: Shape,
        /// Supplied shape.
        found: Shape,
    },
    /// A tensor was built with a wrong number of elements.
    #[error("shape {shape} needs {} elements, got {len}", shape.numel())]
    ElementCount {
        /// The shape.
        shape: Shape,
        /// Number of elements supplied.
        len: usize,
    },
}

/// Runs `graph` on `inputs` (keyed by input name; weights included) and
/// returns its outputs by name. Only nodes an output depends on are
/// evaluated, so inputs of dead branches need not be supplied.
pub fn run(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, InterpError> {
    let values = evaluate(graph, inputs, &[])?;
    Ok(graph
        .outputs()
        .iter()
        .map(|(name, id)| (name.clone(), values[id].clone()))
        .collect())
}

/// Runs `graph` like [`run`] and returns the values of the outputs and of
/// every node in `keep` (for comparing intermediates with a GPU run).
pub fn run_keeping(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    keep: &[NodeId],
) -> Result<HashMap<NodeId, Tensor>, InterpError> {
    evaluate(graph, inputs, keep)
}

fn evaluate(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    keep: &[NodeId],
) -> Result<HashMap<NodeId, Tensor>, InterpError> {
    let live = graph.live_nodes();
    let order: Vec<NodeId> = graph
        .topo_order()?
        .into_iter()
        .filter(|id| live.contains(id))
        .collect();
    let mut remaining_uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for o in graph.operands(id) {
            *remaining_uses.entry(o).or_default() += 1;
        }
    }
    for id in graph.outputs().iter().map(|(_, id)| id).chain(keep) {
        // Outputs and kept values are never freed.
        *remaining_uses.entry(*id).or_default() += 1;
    }

    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let value = if let Op::Input { name, .. } = &node.op {
            let given = inputs
                .get(name)
                .ok_or_else(|| InterpError::MissingInput(name.clone()))?;
            if given.shape != node.ty.shape {
                return Err(InterpError::InputShape {
                    name: name.clone(),
                    expected: node.ty.shape.clone(),
                    found: given.shape.clone(),
                });
            }
            let dtype = node.ty.dtype;
            Tensor {
                shape: given.shape.clone(),
                data: given.data.iter().map(|&v| dtype.round(v)).collect(),
            }
        } else {
            let operands = graph.operands(id);
            let args: Vec<&Tensor> = operands.iter().map(|o| &values[o]).collect();
            let out = kernels::eval(&node.op, &args, &node.ty.shape);
            for o in operands {
                let n = remaining_uses.get_mut(&o).expect("counted above");
                *n -= 1;
                if *n == 0 {
                    values.remove(&o);
                }
            }
            out
        };
        values.insert(id, value);
    }
    Ok(values)
}
