//! Errors of graph construction and verification.

/// Something is wrong with a graph or with a node being added to one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IrError {
    /// An op's operands do not fit its typing rule.
    #[error("{op} in `{scope}`: {msg}")]
    Type {
        /// The op with its attributes.
        op: String,
        /// Builder scope of the node.
        scope: String,
        /// What is wrong.
        msg: String,
    },
    /// Two inputs share a name.
    #[error("duplicate graph input `{0}`")]
    DuplicateInput(String),
    /// Two outputs share a name.
    #[error("duplicate graph output `{0}`")]
    DuplicateOutput(String),
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// The graph declares no outputs.
    #[error("the graph has no outputs")]
    NoOutputs,
    /// A structural rule is broken (details in the message).
    #[error("invalid graph: {0}")]
    Invalid(String),
}
