//! Graph-to-graph passes over the fluxc IR (q/k/v fusion on an e-graph,
//! conv1x1-as-matmul, fusion, fp8 quantization insertion, cleanups), one file
//! per pass and a pipeline that lists them in order.
//!
//! No passes exist yet: the crate is part of the workspace layout so the
//! dependency structure is fixed from the start.
