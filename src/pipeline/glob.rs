//! Device name patterns for model bindings: `*` matches any run of characters, `?` one.

pub fn matches(pattern: &str, name: &str) -> bool {
    // Runs for every sample against every binding: ASCII names (the usual case) are
    // matched on their bytes, without collecting characters.
    if pattern.is_ascii() && name.is_ascii() {
        return wildcard(pattern.as_bytes(), name.as_bytes());
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    wildcard(&p, &n)
}

fn wildcard<T: PartialEq + Copy + Wild>(p: &[T], n: &[T]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi].any_one() || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi].any_run() {
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
    p[pi..].iter().all(|c| c.any_run())
}

trait Wild {
    fn any_one(self) -> bool;
    fn any_run(self) -> bool;
}

impl Wild for u8 {
    fn any_one(self) -> bool {
        self == b'?'
    }
    fn any_run(self) -> bool {
        self == b'*'
    }
}

impl Wild for char {
    fn any_one(self) -> bool {
        self == '?'
    }
    fn any_run(self) -> bool {
        self == '*'
    }
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
        assert!(matches("pümp-?", "pümp-é"), "one character, not one byte");
    }
}
