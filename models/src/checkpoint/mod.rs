//! Checkpoint loading (in progress).
