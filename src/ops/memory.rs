//! Giving back the pages of start-up code once the daemon is running.
//!
//! Loading a config, a model and TLS roots runs code that is never needed again, and the
//! kernel maps a running binary's code in large pieces (64 KiB around each fault, whole
//! folios where the page cache holds them): after start-up most of the 24 MB binary is
//! counted in the daemon's resident memory although a few MiB of it are in use. Those are
//! clean pages of the file, so unmapping them is free: the page cache keeps them and the
//! code that does run faults its pages back in. What stays resident is then the code the
//! daemon uses, which is what an operator sizing a gateway wants `RSS` to say.

/// Unmaps the daemon's own read-only file pages (machine code, constants, unwind tables).
/// Returns the bytes unmapped; 0 where the platform has no `/proc/self/smaps`.
#[cfg(target_os = "linux")]
pub fn release_code_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let own_code = release_code_pages as *const () as usize;
    let binary = mappings(&smaps)
        .find(|m| m.start <= own_code && own_code < m.end)
        .and_then(|m| m.path)
        .ok_or_else(|| std::io::Error::other("no mapping holds the daemon's own code"))?;
    let mut released = 0;
    for m in mappings(&smaps).filter(|m| m.path == Some(binary) && m.releasable()) {
        // SAFETY: the range is one whole mapping of the binary, read-only and without a
        // single private (written) page, so every page of it is a clean copy of the file
        // and reads back the same after MADV_DONTNEED. No Rust reference is invalidated:
        // the contents do not change.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += m.resident_kib * 1024;
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_code_pages() -> std::io::Result<u64> {
    Ok(0)
}

/// One mapping of a process, as `/proc/<pid>/smaps` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: usize,
    pub end: usize,
    pub writable: bool,
    pub private: bool,
    /// The file mapped; `None` for anonymous memory, the heap and the stacks.
    pub path: Option<&'a str>,
    pub resident_kib: u64,
    /// Pages written since they were mapped (relocations, the RELRO region): these exist
    /// only in memory and would be lost.
    pub anonymous_kib: u64,
}

impl Mapping<'_> {
    fn releasable(&self) -> bool {
        self.path.is_some()
            && !self.writable
            && self.private
            && self.anonymous_kib == 0
            && self.resident_kib > 0
    }
}

/// The mappings of a `/proc/<pid>/smaps` text, in order. A mapping whose header cannot be
/// read ends the walk: nothing after it is trusted.
pub fn mappings(smaps: &str) -> impl Iterator<Item = Mapping<'_>> {
    let mut lines = smaps.lines().peekable();
    std::iter::from_fn(move || {
        let header = lines.next()?;
        let mut fields = header.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        // offset, device, inode, then the path (which may hold spaces).
        let path = header
            .splitn(6, char::is_whitespace)
            .nth(5)
            .map(str::trim)
            .filter(|p| p.starts_with('/'));
        let mut mapping = Mapping {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            writable: perms.as_bytes().get(1) == Some(&b'w'),
            private: perms.as_bytes().get(3) == Some(&b'p'),
            path,
            resident_kib: 0,
            anonymous_kib: 0,
        };
        // Attribute lines ("Rss:   12 kB") until the next header ("5555-6666 r-xp ...").
        while let Some(line) = lines.next_if(|l| !is_header(l)) {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = value.parse().unwrap_or(0);
            match key {
                "Rss:" => mapping.resident_kib = value,
                "Anonymous:" => mapping.anonymous_kib = value,
                _ => {}
            }
        }
        Some(mapping)
    })
}

fn is_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5600000000-5600100000 r--p 00000000 fe:01 42   /usr/bin/tidegate
Rss:                1024 kB
Anonymous:             0 kB
5600100000-5601000000 r-xp 00100000 fe:01 42   /usr/bin/tidegate
Rss:               14924 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
5601000000-5601100000 r--p 01000000 fe:01 42   /usr/bin/tidegate
Rss:                 800 kB
Anonymous:           800 kB
5601100000-5601200000 rw-p 01100000 fe:01 42   /usr/bin/tidegate
Rss:                  40 kB
Anonymous:            40 kB
7f00000000-7f00100000 r-xp 00000000 fe:01 7    /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1016 kB
Anonymous:             0 kB
7f00200000-7f00300000 rw-p 00000000 00:00 0 
Rss:                 436 kB
Anonymous:           436 kB
";

    #[test]
    fn only_clean_read_only_pages_of_a_file_are_releasable() {
        let found: Vec<_> = mappings(SMAPS).collect();
        assert_eq!(found.len(), 6);
        assert_eq!(found[1].start, 0x5600100000);
        assert_eq!(found[1].end, 0x5601000000);
        assert_eq!(found[1].path, Some("/usr/bin/tidegate"));
        assert_eq!(found[1].resident_kib, 14924);
        assert_eq!(found[5].path, None);
        let releasable: Vec<_> = found.iter().map(Mapping::releasable).collect();
        // The relocated (RELRO) and writable segments hold pages that exist only in
        // memory; an anonymous mapping has no file to read back from.
        assert_eq!(releasable, [true, true, false, false, true, false]);
    }

    #[test]
    fn a_path_with_spaces_is_read_whole() {
        let text = "1000-2000 r-xp 00000000 fe:01 9 /opt/my gateway/tidegate\nRss: 4 kB\n";
        let m = mappings(text).next().unwrap();
        assert_eq!(m.path, Some("/opt/my gateway/tidegate"));
        assert_eq!(m.resident_kib, 4);
    }

    #[test]
    fn the_running_binary_gives_back_its_code_and_keeps_working() {
        let released = release_code_pages().expect("release");
        assert!(released > 0, "the test binary's code was resident");
        // Code and constants still read the same after being faulted back in.
        let text = format!("{:?}", std::collections::BTreeMap::from([(1, "one")]));
        assert_eq!(text, "{1: \"one\"}");
    }
}
