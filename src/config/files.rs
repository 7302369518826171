//! Reading the config files: the main file plus `conf.d/*.toml` drop-ins beside it,
//! merged in sorted order (tables merge, arrays append, later scalars win), with a map
//! from every key path of the merged document back to the file, line and column it came
//! from, so that every error can point at the line to fix.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

/// A place in a config file, 1-based like an editor shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in the config, with where it is and which key it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Option<Location>,
    /// Dotted key path such as `sources.mqtt[0].port`; empty for whole-file errors.
    pub key_path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)
    }
}

struct SourceFile {
    path: PathBuf,
    text: String,
}

/// The merged document and the way back from key paths to source lines.
pub struct ConfigDocument {
    files: Vec<SourceFile>,
    pub merged: Table,
    spans: HashMap<String, (usize, Range<usize>)>,
}

impl ConfigDocument {
    /// Reads `main` and the drop-ins in `<dir of main>/conf.d/*.toml`. Syntax errors of
    /// every file are collected before giving up.
    pub fn load(main: &Path) -> Result<Self, Vec<Diagnostic>> {
        let mut paths = vec![main.to_path_buf()];
        let drop_in_dir = main
            .parent()
            .map(|p| p.join("conf.d"))
            .unwrap_or_else(|| PathBuf::from("conf.d"));
        if let Ok(entries) = std::fs::read_dir(&drop_in_dir) {
            let mut drop_ins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
                .collect();
            drop_ins.sort();
            paths.extend(drop_ins);
        }
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((path, text)),
                Err(e) => errors.push(Diagnostic {
                    location: None,
                    key_path: String::new(),
                    message: format!("cannot read {}: {e}", path.display()),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::from_sources(sources)
    }

    /// Builds the document from in-memory texts, in merge order. Used by `load` and by
    /// the embedded demo config.
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<Self, Vec<Diagnostic>> {
        let mut doc = ConfigDocument {
            files: Vec::new(),
            merged: Table::new(),
            spans: HashMap::new(),
        };
        let mut errors = Vec::new();
        for (path, text) in sources {
            let file_index = doc.files.len();
            doc.files.push(SourceFile { path, text });
            let text = &doc.files[file_index].text;
            let table = match toml::from_str::<Table>(text) {
                Ok(table) => table,
                Err(e) => {
                    let location = e.span().map(|s| doc.locate_offset(file_index, s.start));
                    errors.push(Diagnostic {
                        location: location.or_else(|| doc.file_start(file_index)),
                        key_path: String::new(),
                        message: format!("TOML syntax error: {}", e.message().trim()),
                    });
                    continue;
                }
            };
            let mut local_spans = HashMap::new();
            if let Ok(spanned) = DeTable::parse(text) {
                collect_table_spans(spanned.get_ref(), "", &mut local_spans);
            }
            let mut merge_errors = Vec::new();
            let mut merged = std::mem::take(&mut doc.merged);
            let mut ctx = MergeContext {
                file_index,
                local_spans: &local_spans,
                spans: &mut doc.spans,
                errors: &mut merge_errors,
            };
            merge_table(&mut merged, table, "", "", &mut ctx);
            doc.merged = merged;
            for (path, message) in merge_errors {
                errors.push(doc.diagnostic(&path, message));
            }
        }
        if errors.is_empty() {
            Ok(doc)
        } else {
            Err(errors)
        }
    }

    /// The files read, in merge order.
    pub fn file_paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Where `key_path` was written. Falls back to the nearest enclosing key that is
    /// known (a missing key is reported at its table).
    pub fn locate(&self, key_path: &str) -> Option<Location> {
        let mut path = key_path;
        loop {
            if let Some((file, span)) = self.spans.get(path) {
                return Some(self.locate_offset(*file, span.start));
            }
            match parent_path(path) {
                Some(parent) => path = parent,
                None => return self.file_start(0),
            }
        }
    }

    pub fn diagnostic(&self, key_path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            location: self.locate(key_path),
            key_path: key_path.to_string(),
            message: message.into(),
        }
    }

    fn file_start(&self, file_index: usize) -> Option<Location> {
        self.files.get(file_index).map(|f| Location {
            file: f.path.clone(),
            line: 1,
            column: 1,
        })
    }

    fn locate_offset(&self, file_index: usize, offset: usize) -> Location {
        let file = &self.files[file_index];
        let before = &file.text[..offset.min(file.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: file.path.clone(),
            line,
            column,
        }
    }
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> None.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        return path.rfind('[').map(|i| &path[..i]);
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

pub fn join_key(prefix: &str, key: &str) -> String {
    let key = if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('"', "\\\""))
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

pub fn join_index(prefix: &str, index: usize) -> String {
    format!("{prefix}[{index}]")
}

fn collect_table_spans(table: &DeTable<'_>, prefix: &str, out: &mut HashMap<String, Range<usize>>) {
    for (key, value) in table.iter() {
        let path = join_key(prefix, key.get_ref());
        out.insert(path.clone(), key.span());
        collect_value_spans(value.get_ref(), &path, out);
    }
}

fn collect_value_spans(value: &DeValue<'_>, path: &str, out: &mut HashMap<String, Range<usize>>) {
    match value {
        DeValue::Table(table) => collect_table_spans(table, path, out),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let item_path = join_index(path, index);
                out.insert(item_path.clone(), item.span());
                collect_value_spans(item.get_ref(), &item_path, out);
            }
        }
        _ => {}
    }
}

struct MergeContext<'a> {
    file_index: usize,
    local_spans: &'a HashMap<String, Range<usize>>,
    spans: &'a mut HashMap<String, (usize, Range<usize>)>,
    errors: &'a mut Vec<(String, String)>,
}

impl MergeContext<'_> {
    fn record(&mut self, merged_path: &str, local_path: &str) {
        if let Some(span) = self.local_spans.get(local_path) {
            self.spans
                .insert(merged_path.to_string(), (self.file_index, span.clone()));
        }
    }

    /// Records the location of `value` and everything under it.
    fn record_all(&mut self, value: &Value, merged_path: &str, local_path: &str) {
        self.record(merged_path, local_path);
        match value {
            Value::Table(table) => {
                for (key, child) in table {
                    self.record_all(
                        child,
                        &join_key(merged_path, key),
                        &join_key(local_path, key),
                    );
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    self.record_all(
                        child,
                        &join_index(merged_path, index),
                        &join_index(local_path, index),
                    );
                }
            }
            _ => {}
        }
    }
}

fn merge_table(
    dst: &mut Table,
    src: Table,
    merged_prefix: &str,
    local_prefix: &str,
    ctx: &mut MergeContext<'_>,
) {
    for (key, value) in src {
        let merged_path = join_key(merged_prefix, &key);
        let local_path = join_key(local_prefix, &key);
        match (dst.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(incoming)) => {
                ctx.record(&merged_path, &local_path);
                merge_table(existing, incoming, &merged_path, &local_path, ctx);
            }
            (Some(Value::Array(existing)), Value::Array(incoming)) => {
                let offset = existing.len();
                for (index, item) in incoming.into_iter().enumerate() {
                    ctx.record_all(
                        &item,
                        &join_index(&merged_path, offset + index),
                        &join_index(&local_path, index),
                    );
                    existing.push(item);
                }
            }
            (Some(existing @ (Value::Table(_) | Value::Array(_))), incoming) => {
                let was = type_name(existing);
                ctx.record(&merged_path, &local_path);
                ctx.errors.push((
                    merged_path,
                    format!(
                        "a drop-in gives a {} here, but an earlier file gives a {was}: they cannot be merged",
                        type_name(&incoming)
                    ),
                ));
            }
            (_, incoming) => {
                ctx.record_all(&incoming, &merged_path, &local_path);
                dst.insert(key, incoming);
            }
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Boolean(_) => "boolean",
        Value::Datetime(_) => "datetime",
        Value::Array(_) => "array",
        Value::Table(_) => "table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(files: &[(&str, &str)]) -> ConfigDocument {
        ConfigDocument::from_sources(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn drop_ins_merge_tables_and_append_arrays() {
        let d = doc(&[
            (
                "main.toml",
                "[store]\nmax_bytes = \"1MiB\"\n[[uplinks.stdout]]\nname = \"a\"\n",
            ),
            (
                "conf.d/10.toml",
                "[store]\ndurability = \"interval\"\n\n[[uplinks.stdout]]\nname = \"b\"\n",
            ),
        ]);
        let store = d.merged["store"].as_table().unwrap();
        assert_eq!(store["max_bytes"].as_str(), Some("1MiB"));
        assert_eq!(store["durability"].as_str(), Some("interval"));
        let stdout = d.merged["uplinks"]["stdout"].as_array().unwrap();
        assert_eq!(stdout.len(), 2);
        let loc = d.locate("uplinks.stdout[1].name").unwrap();
        assert_eq!(loc.file, PathBuf::from("conf.d/10.toml"));
        assert_eq!(loc.line, 5);
        let loc = d.locate("store.max_bytes").unwrap();
        assert_eq!((loc.file.to_str().unwrap(), loc.line), ("main.toml", 2));
    }

    #[test]
    fn unknown_paths_fall_back_to_their_table() {
        let d = doc(&[("m.toml", "\n\n[store]\nmax_bytes = 3\n")]);
        let loc = d.locate("store.nonexistent").unwrap();
        assert_eq!(loc.line, 3);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = ConfigDocument::from_sources(vec![(
            PathBuf::from("bad.toml"),
            "[store]\nmax_bytes = = 3\n".into(),
        )])
        .err()
        .unwrap();
        let text = err[0].to_string();
        assert!(text.starts_with("bad.toml:2:"), "{text}");
    }

    #[test]
    fn parent_paths_walk_up() {
        assert_eq!(parent_path("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent_path("a.b[2]"), Some("a.b"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
