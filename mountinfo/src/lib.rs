//! What is mounted where, as `/proc/self/mountinfo` tells it (Linux): `chkptctl mount` refuses a
//! folder that is a mount point already, and the power-loss test file system waits for its own
//! mount to show up. One reader for both, so the two cannot drift.

use std::io;
use std::path::Path;

/// Where mountinfo is read from.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mount, as mountinfo lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted, unescaped.
    pub point: String,
    /// Its file system type (`ext4`, `fuse.chkpt`, …).
    pub fs_type: String,
    /// What is mounted (a device, or a FUSE file system's name).
    pub source: String,
}

/// Every mount this process sees.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string(MOUNTINFO)?))
}

/// What is mounted at `path`, if anything (the first mount listed there).
pub fn mounted_at(path: &Path) -> io::Result<Option<Mount>> {
    let want = path.to_string_lossy();
    Ok(mounts()?.into_iter().find(|m| m.point == want))
}

/// The mounts of mountinfo's text. A line is `id parent major:minor root point options
/// [optional fields…] - type source super-options`; one without the `-` is passed over.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let field = |i: usize| fields.get(i).map_or_else(String::new, |t| unescape(t));
            Some(Mount {
                point,
                fs_type: field(dash + 1),
                source: field(dash + 2),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few others as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_with_escaped_names() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert!(mounted_at(Path::new("/")).unwrap().is_some());
        assert_eq!(mounted_at(Path::new("/no/such/mount/point")).unwrap(), None);
    }

    #[test]
    fn a_line_gives_its_point_type_and_source() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - fuse.lazyfs chkpt-lazyfs rw\n\
                    no dash here at all\n";
        assert_eq!(
            parse(text),
            [Mount {
                point: "/mnt two".into(),
                fs_type: "fuse.lazyfs".into(),
                source: "chkpt-lazyfs".into(),
            }]
        );
    }
}
