//! fluxc's tensor IR.
//!
//! A FLUX model is built here as a [`Graph`] of [`Op`]s over statically shaped
//! tensors ([`TensorType`]), through [`GraphBuilder`]. Every graph can be
//! [`verify`]'d, printed deterministically ([`print_graph`]), counted
//! ([`GraphStats`]) and run on the CPU by the reference interpreter
//! ([`interp::run`]), which defines what each op means. Passes, codegen and the
//! GPU runtime are all checked against that interpreter.

mod builder;
mod dtype;
mod error;
mod graph;
mod infer;
pub mod interp;
mod op;
mod print;
mod shape;
mod stats;
mod verify;

pub use builder::GraphBuilder;
pub use dtype::{DType, UnknownDType};
pub use error::IrError;
pub use graph::{Graph, Node, NodeId};
pub use infer::infer;
pub use op::{BinaryOp, InputKind, Op, OpClass, Scalar, TimestepParams, UnaryOp, MIN_AMAX};
pub use print::print_graph;
pub use shape::{Shape, TensorType};
pub use stats::{node_flops, GraphStats};
pub use verify::verify;
