//! Hostile archives planted in the store: restore refuses each one, naming the entry, and
//! nothing outside the destination changes (and existing outputs stay in place).

use cairn::cache::archive::{self, Limits, Packed};
use cairn::cache::Store;
use cairn::plan::key::{KeyManifest, KEY_SCHEMA_VERSION};
use std::collections::BTreeMap;
use std::path::Path;
use tar::EntryType;

/// One raw tar entry, written byte by byte so nothing sanitises the name.
fn raw(name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &[u8]) -> Vec<u8> {
    raw(name, EntryType::Regular, b"", b"evil\n")
}
fn dir(name: &[u8]) -> Vec<u8> {
    raw(name, EntryType::Directory, b"", b"")
}
fn link(name: &[u8], target: &[u8]) -> Vec<u8> {
    raw(name, EntryType::Symlink, target, b"")
}

fn archive_of(entries: Vec<Vec<u8>>) -> Vec<u8> {
    let mut tar: Vec<u8> = entries.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    zstd::encode_all(&tar[..], 3).unwrap()
}

fn manifest(step: &str) -> KeyManifest {
    KeyManifest {
        schema: KEY_SCHEMA_VERSION,
        command: format!("make {step}"),
        workdir: ".".into(),
        env: BTreeMap::new(),
        secrets: vec![],
        toolchains: BTreeMap::new(),
        services: BTreeMap::new(),
        platform: "test".into(),
        inputs: BTreeMap::new(),
        upstream: BTreeMap::new(),
        outputs: vec!["out".into()],
    }
}

/// Every file and symlink under `dir` (except the store) with its content or target.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().to_string();
        if rel.starts_with("project/cache") {
            continue;
        }
        let v = if e.path_is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if e.file_type().is_file() {
            std::fs::read_to_string(e.path()).unwrap_or_default()
        } else {
            "dir".into()
        };
        out.insert(rel, v);
    }
    out
}

fn variants() -> Vec<(&'static str, Vec<Vec<u8>>, &'static str)> {
    vec![
        ("dotdot", vec![file(b"../evil.txt")], "../evil.txt"),
        ("dotdot-nested", vec![dir(b"out/"), file(b"out/../../evil.txt")], "out/../../evil.txt"),
        ("dot-slash-dotdot", vec![file(b"./../evil.txt")], "./../evil.txt"),
        ("absolute", vec![file(b"/tmp/cairn-hostile-abs.txt")], "/tmp/cairn-hostile-abs.txt"),
        ("symlink-absolute", vec![dir(b"out/"), link(b"out/l", b"/etc")], "out/l"),
        ("symlink-escapes", vec![dir(b"out/"), link(b"out/l", b"../../outside")], "out/l"),
        (
            "symlink-then-file-through-it",
            vec![dir(b"out/"), dir(b"out/sub/"), link(b"out/l", b"sub"), file(b"out/l/evil.txt")],
            "out/l/evil.txt",
        ),
        (
            "symlink-dotdot-then-file",
            vec![dir(b"out/"), link(b"out/l", b".."), file(b"out/l/evil.txt")],
            "out/l/evil.txt",
        ),
        ("second-symlink-escapes", vec![dir(b"out/"), link(b"out/a", b"b"), link(b"out/b", b"../../../x")], "out/b"),
        ("hardlink-outside", vec![dir(b"out/"), raw(b"out/h", EntryType::Link, b"/etc/passwd", b"")], "out/h"),
        ("hardlink-inside", vec![dir(b"out/"), file(b"out/a"), raw(b"out/h", EntryType::Link, b"out/a", b"")], "out/h"),
        ("char-device", vec![dir(b"out/"), raw(b"out/tty", EntryType::Char, b"", b"")], "out/tty"),
        ("block-device", vec![dir(b"out/"), raw(b"out/sda", EntryType::Block, b"", b"")], "out/sda"),
        ("fifo", vec![dir(b"out/"), raw(b"out/pipe", EntryType::Fifo, b"", b"")], "out/pipe"),
        ("duplicate", vec![dir(b"out/"), file(b"out/a"), file(b"out/a")], "out/a"),
        ("empty-name", vec![file(b"")], "entry ``"),
        ("reserved-path", vec![file(b".cairn/evil")], ".cairn/evil"),
        ("unknown-type", vec![dir(b"out/"), raw(b"out/odd", EntryType::new(b'Z'), b"", b"")], "out/odd"),
        // The tar reader itself refuses a malformed sparse header before it has a name.
        ("gnu-sparse", vec![dir(b"out/"), raw(b"out/sparse", EntryType::GNUSparse, b"", b"")], "archive entry"),
        ("non-utf8-name", vec![dir(b"out/"), file(b"out/\xff\xfe")], "not UTF-8"),
        // Links are resolved through each other, as the kernel will once they are in place:
        // `x` is `out` itself, so `x/../..` leaves the workspace though it looks inside.
        (
            "symlink-chain-escapes",
            vec![dir(b"out/"), link(b"out/x", b"."), link(b"out/a.txt", b"x/../../elsewhere/f")],
            "out/a.txt",
        ),
        // The order of entries cannot hide a chain: the link that makes it comes last.
        (
            "symlink-chain-defined-later",
            vec![dir(b"out/"), link(b"out/a", b"z/../../../f"), link(b"out/z", b"sub"), link(b"out/sub", b".")],
            "out/a",
        ),
        // Inside the workspace, but onto a source file: the step's next run would overwrite it.
        ("symlink-onto-an-input", vec![dir(b"out/"), link(b"out/a.txt", b"../src/x.txt")], "out/a.txt"),
        ("symlink-onto-inputs-dir", vec![dir(b"out/"), link(b"out/s", b"../src")], "out/s"),
        ("symlink-to-the-root", vec![dir(b"out/"), link(b"out/r", b"..")], "out/r"),
        ("symlink-into-git", vec![dir(b"out/"), link(b"out/g", b"../.git/config")], "out/g"),
        ("symlink-into-the-store", vec![dir(b"out/"), link(b"out/c", b"../cache/index.sqlite")], "out/c"),
        // Through a link already in the worktree (outside the outputs) that leaves it.
        ("symlink-through-worktree-link", vec![dir(b"out/"), link(b"out/l", b"../escape/sentinel")], "out/l"),
        ("directory-over-a-file", vec![dir(b"out/"), file(b"out/a"), dir(b"out/a/")], "out/a"),
        ("symlink-over-a-directory", vec![dir(b"out/"), dir(b"out/d/"), link(b"out/d", b".")], "out/d"),
    ]
}

#[test]
fn every_hostile_archive_is_refused_and_nothing_outside_changes() {
    let variants = variants();
    assert!(variants.len() >= 15);
    for (name, entries, needle) in variants {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("project");
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("out/keep.txt"), "existing output\n").unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/sentinel"), "untouched\n").unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/x.txt"), "source\n").unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "[core]\n").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("escape")).unwrap();
        let store = Store::open(&root.join("cache")).unwrap();

        let bytes = archive_of(entries);
        let digest = blake3::hash(&bytes).to_hex().to_string();
        let tmp = store.tmp_dir().join("planted");
        std::fs::write(&tmp, &bytes).unwrap();
        let packed = Packed {
            tmp_path: tmp,
            blob_digest: digest.clone(),
            outputs_digest: digest,
            blob_size: bytes.len() as u64,
            files: 1,
            raw_bytes: 0,
            log_bytes: 0,
            fingerprint: None,
        };
        let entry = store.pending_forced(name, manifest(name)).commit(&store, packed, 5).unwrap();

        let before = snapshot(t.path());
        // `src/x.txt` is some step's input, as the executor would say.
        let protected = |rel: &str| match rel {
            "src/x.txt" => Some("an input of step `compile`".to_string()),
            "src" => Some("a directory holding inputs of step `compile`".to_string()),
            _ => None,
        };
        let err = store.restore(&entry, &root, &["out/".to_string()], &protected, false).expect_err(name).to_string();
        assert!(err.contains(needle), "{name}: the error must name the entry ({needle}): {err}");
        assert_eq!(snapshot(t.path()), before, "{name}: nothing outside the store changed");
        assert!(!Path::new("/tmp/cairn-hostile-abs.txt").exists(), "{name}");
        assert!(store.get(&entry.key).unwrap().is_none(), "{name}: the hostile entry was dropped");
    }
}

#[test]
fn an_archive_bomb_is_stopped_by_the_byte_budget() {
    let t = tempfile::tempdir().unwrap();
    let big = raw(b"out/zeros", EntryType::Regular, b"", &vec![0u8; 4 << 20]);
    let bytes = archive_of(vec![dir(b"out/"), big]);
    let blob = t.path().join("bomb.tar.zst");
    std::fs::write(&blob, &bytes).unwrap();
    let digest = blake3::hash(&bytes).to_hex().to_string();
    let limits = Limits { max_bytes: 1 << 20, ..Limits::default() };
    let outs = ["out/".to_string()];
    let rules = archive::LinkRules::within(t.path(), &outs);
    let err = archive::unpack(&blob, &digest, &t.path().join("staging"), limits, &rules).unwrap_err().to_string();
    assert!(err.contains("out/zeros") && err.contains("byte budget"), "{err}");
}
