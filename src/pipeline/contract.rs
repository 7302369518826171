//! The model contract: what a model needs to be run on live data — its input channels in
//! order, the window length, the per-channel normalisation, the score and its threshold.
//! A model carries it in its ONNX `metadata_props`; a binding in the config may override
//! any part. Resolving the two is pure and names every missing or inconsistent piece.

use std::collections::HashMap;

/// Metadata keys a model may carry.
pub const KEY_CHANNELS: &str = "tidegate.channels";
pub const KEY_WINDOW: &str = "tidegate.window";
pub const KEY_MEAN: &str = "tidegate.mean";
pub const KEY_STD: &str = "tidegate.std";
pub const KEY_THRESHOLD: &str = "tidegate.threshold";
pub const KEY_SCORE: &str = "tidegate.score";
pub const KEY_NAME: &str = "tidegate.name";
pub const KEY_VERSION: &str = "tidegate.version";

/// How the score is read from the model's outputs.
#[derive(Clone, Debug, PartialEq)]
pub enum ScoreSpec {
    /// The named output is the score, one per window.
    Output(String),
    /// The named output is a reconstruction of the input window; the score is the mean
    /// squared difference to the (normalised) input.
    ReconstructionMse(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Contract {
    /// Shared: every verdict the model gives carries its name and version.
    pub name: std::sync::Arc<str>,
    pub version: std::sync::Arc<str>,
    pub channels: Vec<String>,
    pub window: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub threshold: f64,
    pub score: ScoreSpec,
}

/// Parts of the contract given in the config, each overriding the model's own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub channels: Option<Vec<String>>,
    pub window: Option<usize>,
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub threshold: Option<f64>,
    pub score: Option<String>,
}

pub fn parse_score(text: &str) -> Result<ScoreSpec, String> {
    match text.split_once(':') {
        Some(("output", name)) if !name.is_empty() => Ok(ScoreSpec::Output(name.to_string())),
        Some(("reconstruction_mse", name)) if !name.is_empty() => {
            Ok(ScoreSpec::ReconstructionMse(name.to_string()))
        }
        _ => Err(format!(
            "score \"{text}\" must be \"output:<output name>\" or \"reconstruction_mse:<output name>\""
        )),
    }
}

fn floats(key: &str, text: &str) -> Result<Vec<f64>, String> {
    let values: Vec<f64> = serde_json::from_str(text)
        .map_err(|e| format!("{key} is not a JSON list of numbers: {e}"))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!("{key} holds a value that is not a finite number"));
    }
    Ok(values)
}

/// Combines the model's metadata with the binding's overrides. Returns every problem.
pub fn resolve(
    metadata: &HashMap<String, String>,
    overrides: &Overrides,
    fallback_name: &str,
) -> Result<Contract, Vec<String>> {
    let mut errors = Vec::new();
    let get = |key: &str| metadata.get(key).map(String::as_str);
    let channels = match (&overrides.channels, get(KEY_CHANNELS)) {
        (Some(c), _) => c.clone(),
        (None, Some(text)) => text
            .split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect(),
        (None, None) => {
            errors.push(format!(
                "the model has no `{KEY_CHANNELS}` metadata: set `channels` in the binding"
            ));
            Vec::new()
        }
    };
    let window = match (overrides.window, get(KEY_WINDOW)) {
        (Some(w), _) => w,
        (None, Some(text)) => text.trim().parse().unwrap_or_else(|_| {
            errors.push(format!("{KEY_WINDOW} \"{text}\" is not a whole number"));
            0
        }),
        (None, None) => {
            errors.push(format!(
                "the model has no `{KEY_WINDOW}` metadata: set `window` in the binding"
            ));
            0
        }
    };
    if window == 0 && errors.is_empty() {
        errors.push("the window must hold at least one row".into());
    }
    let mut per_channel = |override_: &Option<Vec<f64>>, key: &str, default: f64| -> Vec<f64> {
        let values = match (override_, get(key)) {
            (Some(v), _) => v.clone(),
            (None, Some(text)) => floats(key, text).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            }),
            (None, None) => vec![default; channels.len()],
        };
        if values.len() != channels.len() {
            errors.push(format!(
                "{} has {} values but there are {} channels ({})",
                key.trim_start_matches("tidegate."),
                values.len(),
                channels.len(),
                channels.join(", ")
            ));
        }
        values
    };
    let mean = per_channel(&overrides.mean, KEY_MEAN, 0.0);
    let std = per_channel(&overrides.std, KEY_STD, 1.0);
    if std.iter().any(|s| *s <= 0.0) {
        errors.push("every std must be positive".into());
    }
    let threshold = match (overrides.threshold, get(KEY_THRESHOLD)) {
        (Some(t), _) => t,
        (None, Some(text)) => text.trim().parse().unwrap_or_else(|_| {
            errors.push(format!("{KEY_THRESHOLD} \"{text}\" is not a number"));
            f64::NAN
        }),
        (None, None) => {
            errors.push(format!(
                "the model has no `{KEY_THRESHOLD}` metadata: set `threshold` in the binding"
            ));
            f64::NAN
        }
    };
    if threshold.is_nan() && errors.is_empty() {
        errors.push("the threshold must be a number".into());
    }
    let score = match (&overrides.score, get(KEY_SCORE)) {
        (Some(text), _) => parse_score(text),
        (None, Some(text)) => parse_score(text),
        (None, None) => Err(format!(
            "the model has no `{KEY_SCORE}` metadata: set `score` in the binding (e.g. \"output:score\")"
        )),
    };
    let score = score.unwrap_or_else(|e| {
        errors.push(e);
        ScoreSpec::Output(String::new())
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Contract {
        name: get(KEY_NAME).unwrap_or(fallback_name).into(),
        version: get(KEY_VERSION).unwrap_or("").into(),
        channels,
        window,
        mean,
        std,
        threshold,
        score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> HashMap<String, String> {
        [
            (KEY_CHANNELS, "a,b"),
            (KEY_WINDOW, "4"),
            (KEY_MEAN, "[1.0, 2.0]"),
            (KEY_STD, "[0.5, 2.0]"),
            (KEY_THRESHOLD, "3.5"),
            (KEY_SCORE, "output:score"),
            (KEY_NAME, "m"),
            (KEY_VERSION, "7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn metadata_alone_is_a_full_contract() {
        let c = resolve(&meta(), &Overrides::default(), "x").unwrap();
        assert_eq!(c.channels, vec!["a", "b"]);
        assert_eq!((c.window, c.threshold), (4, 3.5));
        assert_eq!(c.score, ScoreSpec::Output("score".into()));
        assert_eq!((&*c.name, &*c.version), ("m", "7"));
    }

    #[test]
    fn overrides_win_and_inconsistencies_are_named() {
        let o = Overrides {
            threshold: Some(9.0),
            channels: Some(vec!["a".into(), "b".into(), "c".into()]),
            ..Overrides::default()
        };
        let errors = resolve(&meta(), &o, "x").unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("mean has 2 values but there are 3 channels (a, b, c)")),
            "{errors:?}"
        );
        let o = Overrides {
            threshold: Some(9.0),
            ..Overrides::default()
        };
        assert_eq!(resolve(&meta(), &o, "x").unwrap().threshold, 9.0);
    }

    #[test]
    fn a_bare_model_needs_the_binding_to_say_everything() {
        let errors = resolve(&HashMap::new(), &Overrides::default(), "x").unwrap_err();
        assert!(errors.iter().any(|e| e.contains("set `channels`")));
        assert!(errors.iter().any(|e| e.contains("set `window`")));
        assert!(errors.iter().any(|e| e.contains("set `threshold`")));
        assert!(errors.iter().any(|e| e.contains("set `score`")));
    }
}
