//! The e-graph language of linear fusion, and the facts each e-class carries.
//!
//! Only what fusion needs is modelled: a `linear` over opaque graph values
//! (leaves named `%<node index>`), `cat` (weights stacked along their output
//! features, done at load time) and `cols` (a range of output features, a
//! view). Each e-class knows its output width, the rows of its input, and —
//! for weight expressions — which graph weights it stacks, in order.

use std::collections::HashMap;

use egg::{define_language, Analysis, DidMerge, EGraph, Id, Symbol};

// `(linear x w b)` is `x · wᵀ + b`; `(cat a b)` stacks `a` and `b` along
// dim 0 (output features); `(cols start len t)` takes output features
// `start..start+len` of `t`; `Num` is a count or offset; `Leaf` a graph value
// named `%<node index>`.
define_language! {
    /// Linears over opaque graph values.
    pub enum LinearLang {
        "linear" = Linear([Id; 3]),
        "cat" = Cat([Id; 2]),
        "cols" = Cols([Id; 3]),
        Num(usize),
        Leaf(Symbol),
    }
}

/// What the graph says about a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafFacts {
    /// Output features: dim 0 of a weight, the last dim of an activation.
    pub width: usize,
    /// Rows of an activation (all dims but the last); 0 for weights.
    pub rows: usize,
    /// For a weight input: its position among the graph's weights, which
    /// fixes the order fused weights are stacked in. `None` for activations
    /// and computed values, which are never stacked.
    pub order: Option<u32>,
}

/// Facts of one e-class.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClassFacts {
    /// Output features (or the number, for `Num`).
    pub width: usize,
    /// Rows of the linear's input (activations and linears only).
    pub rows: usize,
    /// The graph weights a weight expression stacks, in order.
    pub stacked: Vec<u32>,
    /// The value of a `Num`.
    pub num: Option<usize>,
}

/// The e-class analysis: leaf facts come from the graph, the rest follow.
#[derive(Default)]
pub struct Facts {
    /// Facts of every leaf symbol added to the e-graph.
    pub leaves: HashMap<Symbol, LeafFacts>,
}

impl Analysis<LinearLang> for Facts {
    type Data = ClassFacts;

    fn make(egraph: &mut EGraph<LinearLang, Self>, enode: &LinearLang, _id: Id) -> ClassFacts {
        let data = |id: &Id| &egraph[*id].data;
        match enode {
            LinearLang::Num(n) => ClassFacts {
                width: *n,
                num: Some(*n),
                ..ClassFacts::default()
            },
            LinearLang::Leaf(name) => {
                let leaf = egraph
                    .analysis
                    .leaves
                    .get(name)
                    .copied()
                    .unwrap_or(LeafFacts {
                        width: 0,
                        rows: 0,
                        order: None,
                    });
                ClassFacts {
                    width: leaf.width,
                    rows: leaf.rows,
                    stacked: leaf.order.into_iter().collect(),
                    num: None,
                }
            }
            LinearLang::Cat([a, b]) => {
                let (a, b) = (data(a), data(b));
                let both_weights = !a.stacked.is_empty() && !b.stacked.is_empty();
                ClassFacts {
                    width: a.width + b.width,
                    rows: 0,
                    stacked: if both_weights {
                        a.stacked.iter().chain(&b.stacked).copied().collect()
                    } else {
                        Vec::new()
                    },
                    num: None,
                }
            }
            LinearLang::Linear([x, w, _]) => ClassFacts {
                width: data(w).width,
                rows: data(x).rows,
                ..ClassFacts::default()
            },
            LinearLang::Cols([_, len, t]) => ClassFacts {
                width: data(len).num.unwrap_or(0),
                rows: data(t).rows,
                ..ClassFacts::default()
            },
        }
    }

    fn merge(&mut self, a: &mut ClassFacts, b: ClassFacts) -> DidMerge {
        // Only equal values are ever unioned, so their facts agree; keep `a`.
        debug_assert_eq!(a.width, b.width, "unioned classes of different widths");
        DidMerge(false, a != &b)
    }
}
