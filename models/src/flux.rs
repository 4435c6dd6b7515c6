//! FLUX builder (in progress).
