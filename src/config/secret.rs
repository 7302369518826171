//! Secrets by reference. A password or token is never written in the config itself: the
//! config names a file, or a systemd credential (`LoadCredential=` puts it in
//! `$CREDENTIALS_DIRECTORY`). The loaded value prints as `<redacted>` everywhere.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a secret comes from, as written in config:
/// `password = { file = "/etc/tidegate/mqtt.pass" }` or
/// `token = { credential = "uplink-token" }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Path of a file holding the secret. Trailing newlines are ignored.
    pub file: Option<PathBuf>,
    /// Name of a systemd credential, read from `$CREDENTIALS_DIRECTORY/<name>`.
    pub credential: Option<String>,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, &self.credential) {
            (Some(path), _) => write!(f, "file {}", path.display()),
            (None, Some(name)) => write!(f, "credential {name}"),
            (None, None) => f.write_str("nothing"),
        }
    }
}

/// A loaded secret. It can be used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Checks the shape of a reference (exactly one of `file` / `credential`). Pure.
pub fn check_ref(secret: &SecretRef) -> Result<(), String> {
    match (&secret.file, &secret.credential) {
        (Some(_), Some(_)) => Err("give either `file` or `credential`, not both".into()),
        (None, None) => Err("give `file = \"/path\"` or `credential = \"name\"`".into()),
        (None, Some(name)) if name.is_empty() || name.contains('/') => Err(format!(
            "credential name \"{name}\" must be a plain file name"
        )),
        _ => Ok(()),
    }
}

/// Reads the secret. `credentials_dir` is `$CREDENTIALS_DIRECTORY`, passed in so that
/// callers (and tests) decide where it comes from.
pub fn load(secret: &SecretRef, credentials_dir: Option<&Path>) -> Result<Secret, String> {
    let path = match (&secret.file, &secret.credential) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => match credentials_dir {
            Some(dir) => dir.join(name),
            None => {
                return Err(format!(
                    "credential \"{name}\" requested but $CREDENTIALS_DIRECTORY is not set \
                     (add LoadCredential={name}:/path to the service unit)"
                ));
            }
        },
        (None, None) => return Err("no secret source given".into()),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret from {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
    }

    #[test]
    fn loads_from_file_and_credentials_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "abc\n").unwrap();
        let by_file = SecretRef {
            file: Some(dir.path().join("tok")),
            credential: None,
        };
        assert_eq!(load(&by_file, None).unwrap().expose(), "abc");
        let by_cred = SecretRef {
            file: None,
            credential: Some("tok".into()),
        };
        assert_eq!(load(&by_cred, Some(dir.path())).unwrap().expose(), "abc");
        assert!(
            load(&by_cred, None)
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY")
        );
    }

    #[test]
    fn reference_needs_exactly_one_source() {
        let both = SecretRef {
            file: Some("/a".into()),
            credential: Some("b".into()),
        };
        assert!(check_ref(&both).is_err());
        let none = SecretRef {
            file: None,
            credential: None,
        };
        assert!(check_ref(&none).is_err());
    }
}
