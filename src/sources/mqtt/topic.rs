//! Topic filters and topic templates. A template such as `plant/{line}/{device}/telemetry`
//! is matched against each received topic: `{name}` segments are captured (and become
//! fields of the sample), `{device}` names the device, `+` matches any one segment and a
//! final `#` any remainder.

use std::fmt;

/// Checks an MQTT topic filter the way the broker will.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if filter.contains('\0') {
        return Err("a topic filter must not contain NUL".into());
    }
    let segments: Vec<&str> = filter.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if segment.contains('#') && (*segment != "#" || i + 1 != segments.len()) {
            return Err(format!("\"{filter}\": '#' must be the whole last segment"));
        }
        if segment.contains('+') && *segment != "+" {
            return Err(format!("\"{filter}\": '+' must be a whole segment"));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
    AnyOne,
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TopicTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let parts: Vec<&str> = text.split('/').collect();
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!(
                        "\"{text}\": placeholder {{{inner}}} must be a name of letters, digits and '_'"
                    ));
                }
                if names.contains(&inner) {
                    return Err(format!("\"{text}\": placeholder {{{inner}}} appears twice"));
                }
                names.push(inner);
                Segment::Capture(inner.to_string())
            } else if *part == "+" {
                Segment::AnyOne
            } else if *part == "#" {
                if i + 1 != parts.len() {
                    return Err(format!("\"{text}\": '#' must be the last segment"));
                }
                Segment::Rest
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "\"{text}\": segment \"{part}\" mixes text with a placeholder or wildcard; \
                     placeholders must be whole segments"
                ));
            } else {
                Segment::Literal(part.to_string())
            };
            segments.push(segment);
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            segments,
        })
    }

    pub fn has_device(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Capture(name) if name == "device"))
    }

    /// The captured segments, or `None` when the topic does not fit the template.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return Some(out),
                Segment::Literal(lit) => {
                    if parts.next()? != lit {
                        return None;
                    }
                }
                Segment::AnyOne => {
                    parts.next()?;
                }
                Segment::Capture(name) => {
                    let value = parts.next()?;
                    if value.is_empty() {
                        return None;
                    }
                    out.push((name.as_str(), value));
                }
            }
        }
        parts.next().is_none().then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_captures_named_segments() {
        let t = TopicTemplate::parse("plant/{line}/{device}/telemetry").unwrap();
        assert!(t.has_device());
        assert_eq!(
            t.captures("plant/l2/pump-7/telemetry").unwrap(),
            vec![("line", "l2"), ("device", "pump-7")]
        );
        assert!(t.captures("plant/l2/pump-7/status").is_none());
        assert!(t.captures("plant/l2/pump-7/telemetry/extra").is_none());
        assert!(t.captures("plant/l2").is_none());
    }

    #[test]
    fn wildcards_in_templates() {
        let t = TopicTemplate::parse("site/+/{device}/#").unwrap();
        assert_eq!(t.captures("site/x/d1/a/b").unwrap(), vec![("device", "d1")]);
    }

    #[test]
    fn bad_templates_and_filters_are_explained() {
        assert!(
            TopicTemplate::parse("a/{dev}ice/b")
                .unwrap_err()
                .contains("whole segments")
        );
        assert!(
            TopicTemplate::parse("a/{x}/{x}")
                .unwrap_err()
                .contains("twice")
        );
        assert!(TopicTemplate::parse("a/#/b").is_err());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("").is_err());
        assert!(check_filter("plant/+/+/telemetry").is_ok());
        assert!(check_filter("#").is_ok());
    }
}
