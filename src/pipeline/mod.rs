//! The processing between sources and the store: per-device sliding windows and local
//! ONNX anomaly inference (tract) that enrich each sample with its score before it is
//! committed. Owns models and windows; never touches the network or the disk, and never
//! holds samples back for longer than one model run.
//!
//! - `contract`: what a model needs (channels, window, normalisation, score, threshold),
//!   from its ONNX metadata and the binding's overrides. Pure.
//! - `model`: loading, shape checks and batched scoring with tract. Blocking.
//! - `window`: per-device windows and the bad-value policy. Pure.
//! - `stage`: the async stage that ties them into the pipeline.
//! - `replay`: recorded CSV data through the same windows and model, with metrics.
//! - `glob`: device name patterns of bindings.

pub mod contract;
pub mod glob;
pub mod model;
pub mod replay;
pub mod stage;
pub mod window;
