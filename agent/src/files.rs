//! Durable files: written whole or not at all, and file names derived from input that can never
//! leave their folder.

use std::io::Write;
use std::path::Path;

/// Writes `path` atomically: a temporary file beside it is filled by `fill`, fsynced, renamed over
/// `path`, and the folder is fsynced so the rename itself survives a crash.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    fill(&mut w)?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Fsyncs a folder (its entries: renames, creations, removals).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// One path component for any string: letters, digits, `_` and `-` are kept, every other byte
/// becomes `%XX`. So `../../x`, `/etc` or `a/b` name a single entry inside the folder they are
/// joined to, and different strings never share a name.
pub fn component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_never_leaves_its_folder() {
        for s in [
            "../../escape",
            "/etc/passwd",
            "a/b",
            ".",
            "..",
            "",
            "x.y",
            "ok_name-1",
        ] {
            let c = component(s);
            let p = Path::new("/base").join(&c);
            assert_eq!(p.parent(), Some(Path::new("/base")), "{s:?} -> {c:?}");
            assert_eq!(p.components().count(), 3, "{s:?} -> {c:?}");
            assert!(!c.contains('/') && c != "." && c != "..");
        }
        assert_eq!(component("host"), "host");
        assert_ne!(component("a.b"), component("a%2Eb"));
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join("f.json");
        write_atomic(&p, |w| w.write_all(b"one")).expect("write");
        write_atomic(&p, |w| w.write_all(b"two")).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(p.parent().expect("dir"))
                .expect("ls")
                .count(),
            1
        );
    }
}
