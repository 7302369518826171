//! Device name patterns for model bindings: `*` matches any run of characters, `?` one.

pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("pump-*", "pump-12"));
        assert!(matches("*", "anything"));
        assert!(matches("pump-?", "pump-1"));
        assert!(!matches("pump-?", "pump-12"));
        assert!(matches("*-line-*-x", "a-line-b-x"));
        assert!(!matches("pump-*", "fan-1"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
