//! Loading and running an ONNX model with tract: read the model's contract from its
//! metadata, check its declared input against the binding's window and channels (the
//! error names both shapes), optimise it for a symbolic batch size, and score batches of
//! normalised windows. Blocking: callers run it off the async threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::contract::{self, Contract, Overrides, ScoreSpec};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("model {path}: {}", .errors.join("; "))]
    Contract { path: String, errors: Vec<String> },
    /// The input the model declares does not fit the binding's window and channels.
    #[error("model {path} expects input {detail}")]
    Shape { path: String, detail: String },
    #[error("model {path} has no output `{output}`; its outputs are: {outputs}")]
    Output {
        path: String,
        output: String,
        outputs: String,
    },
    #[error("model {path} cannot be prepared for running: {reason}")]
    Prepare { path: String, reason: String },
    #[error("model {name} failed: {reason}")]
    Run { name: String, reason: String },
}

pub struct LoadedModel {
    pub contract: Contract,
    pub path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    /// The model takes [N, W*C] rather than [N, W, C].
    flat_input: bool,
    /// Shape of the declared input, for `check` ("[N, 10, 5]").
    pub input_shape: String,
    pub load_time: Duration,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("contract", &self.contract)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum Dim {
    Known(i64),
    Named(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

fn shape_text(dims: &[Dim]) -> String {
    format!(
        "[{}]",
        dims.iter()
            .map(Dim::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn dims_of(info: &pb::ValueInfoProto) -> Vec<Dim> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    tensor
        .shape
        .as_ref()
        .map(|shape| {
            shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(n)) => Dim::Known(*n),
                    Some(Value::DimParam(s)) if !s.is_empty() => Dim::Named(s.clone()),
                    _ => Dim::Unknown,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fits(dim: &Dim, want: usize) -> bool {
    match dim {
        Dim::Known(n) => *n == want as i64,
        _ => true,
    }
}

/// Loads, checks and optimises the model at `path` for the binding `binding`.
pub fn load(path: &Path, overrides: &Overrides, binding: &str) -> Result<LoadedModel, ModelError> {
    let started = Instant::now();
    let shown = path.display().to_string();
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_path(path)
        .map_err(|e| ModelError::Read {
            path: shown.clone(),
            reason: format!("{e:#}"),
        })?;
    let metadata: HashMap<String, String> = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let contract = contract::resolve(&metadata, overrides, binding).map_err(|errors| {
        ModelError::Contract {
            path: shown.clone(),
            errors,
        }
    })?;
    let graph = proto.graph.as_ref().ok_or_else(|| ModelError::Read {
        path: shown.clone(),
        reason: "the file holds no graph".into(),
    })?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let (w, c) = (contract.window, contract.channels.len());
    let given3 = format!("[N, {w}, {c}]");
    let shape_error = |input: &str, expected: String| ModelError::Shape {
        path: shown.clone(),
        detail: format!(
            "`{input}` {expected} but the binding gives windows of {w} rows × {c} channels ({}): {given3}",
            contract.channels.join(", ")
        ),
    };
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Contract {
            path: shown.clone(),
            errors: vec![format!(
                "the model must have exactly one input, it has {}",
                inputs.len()
            )],
        });
    };
    let dims = dims_of(input);
    let flat_input = match dims.as_slice() {
        [_, dw, dc] if fits(dw, w) && fits(dc, c) => false,
        [_, dwc] if fits(dwc, w * c) => true,
        _ => return Err(shape_error(&input.name, shape_text(&dims))),
    };
    let output_name = match &contract.score {
        ScoreSpec::Output(name) | ScoreSpec::ReconstructionMse(name) => name.clone(),
    };
    let output_index = graph
        .output
        .iter()
        .position(|o| o.name == output_name)
        .ok_or_else(|| ModelError::Output {
            path: shown.clone(),
            output: output_name.clone(),
            outputs: graph
                .output
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    let prepare = |reason: TractError| ModelError::Prepare {
        path: shown.clone(),
        reason: format!("{reason:#}"),
    };
    let mut model = onnx.model_for_proto_model(&proto).map_err(prepare)?;
    let n = model.symbols.sym("N");
    let shape: TVec<TDim> = if flat_input {
        tvec![n.into(), ((w * c) as i64).into()]
    } else {
        tvec![n.into(), (w as i64).into(), (c as i64).into()]
    };
    model
        .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
        .map_err(prepare)?;
    let outlet = model.output_outlets().map_err(prepare)?[output_index];
    model.select_output_outlets(&[outlet]).map_err(prepare)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(prepare)?;
    let loaded = LoadedModel {
        contract,
        path: path.to_path_buf(),
        plan,
        flat_input,
        input_shape: shape_text(&dims),
        load_time: started.elapsed(),
    };
    // One window of zeros: a model that cannot run fails here, at start-up, not on the
    // first live sample.
    let zeros = vec![0f32; w * c];
    loaded.score(&zeros, 1)?;
    Ok(loaded)
}

impl LoadedModel {
    /// Scores `count` normalised windows laid out one after the other (row-major, W × C
    /// each).
    pub fn score(&self, windows: &[f32], count: usize) -> Result<Vec<f32>, ModelError> {
        let (w, c) = (self.contract.window, self.contract.channels.len());
        let run_error = |reason: String| ModelError::Run {
            name: self.contract.name.to_string(),
            reason,
        };
        if windows.len() != count * w * c {
            return Err(run_error(format!(
                "{} values for {count} windows of {w}×{c}",
                windows.len()
            )));
        }
        let shape: &[usize] = if self.flat_input {
            &[count, w * c]
        } else {
            &[count, w, c]
        };
        let input = Tensor::from_shape(shape, windows).map_err(|e| run_error(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec![input.into()])
            .map_err(|e| run_error(format!("{e:#}")))?;
        let output = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| run_error(format!("{e:#}")))?;
        let values: Vec<f32> = output.iter().copied().collect();
        match &self.contract.score {
            ScoreSpec::Output(_) => {
                if values.len() != count {
                    return Err(run_error(format!(
                        "the score output has {} values for {count} windows (shape {:?})",
                        values.len(),
                        output.shape()
                    )));
                }
                Ok(values)
            }
            ScoreSpec::ReconstructionMse(_) => {
                if values.len() != windows.len() {
                    return Err(run_error(format!(
                        "the reconstruction has {} values for {} inputs",
                        values.len(),
                        windows.len()
                    )));
                }
                let per = w * c;
                Ok(windows
                    .chunks(per)
                    .zip(values.chunks(per))
                    .map(|(x, r)| {
                        x.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / per as f32
                    })
                    .collect())
            }
        }
    }

    /// Normalises raw channel values in place with the contract's mean and std.
    pub fn normalise(&self, raw: &mut [f32]) {
        let c = self.contract.channels.len();
        for (i, value) in raw.iter_mut().enumerate() {
            let ch = i % c;
            *value = ((f64::from(*value) - self.contract.mean[ch]) / self.contract.std[ch]) as f32;
        }
    }
}
