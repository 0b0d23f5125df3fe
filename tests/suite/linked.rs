//! Issue 17, item 3: restores that write less. The first restore of an entry extracts it and
//! keeps an unpacked copy in the store; later restores hard-link from it (checked against its
//! manifest first). A step that re-runs never writes through to the copy, a file written by
//! hand makes the copy stale (the blob is extracted instead), and gc covers the copies.

use crate::util::Project;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const PIPELINE: &str = r#"Pipeline(name: "l", steps: {
  "gen": (
    run: "mkdir -p out/sub out/ro && cat src/a.txt > out/a.txt && printf 'x' > out/sub/x.bin && chmod 755 out/sub/x.bin && echo ro > out/ro/f.txt && chmod 444 out/ro/f.txt && chmod 555 out/ro && ln -s a.txt out/link && cat src/extra.txt >> out/a.txt",
    inputs: ["src/**"],
    outputs: ["out/"],
  ),
})"#;

fn timings(p: &Project) -> String {
    let r = p.run_with(&["build", "-p", "pipelines/test.ron"], &[("CAIRN_TIMINGS", "1")]).ok();
    r.stderr
}

fn wipe(p: &Project) {
    let out = p.path().join("out");
    if out.join("ro").exists() {
        std::fs::set_permissions(out.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn later_restores_link_from_an_unpacked_copy_and_stay_exact() {
    let p = Project::new().pipeline(PIPELINE).file("src/a.txt", "alpha\n").file("src/extra.txt", "");
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    wipe(&p);
    // First restore: extracted, and a copy kept.
    let first = timings(&p);
    assert!(first.contains("restore: keep an unpacked copy"), "{first}");
    assert!(!first.contains("link from the unpacked copy"), "{first}");
    let copies: Vec<_> = std::fs::read_dir(p.path().join("cache/unpacked")).unwrap().flatten().collect();
    assert_eq!(copies.len(), 2, "the copy and its manifest");
    wipe(&p);
    // Second: linked from the copy, exactly as archived.
    let second = timings(&p);
    assert!(second.contains("restore: link from the unpacked copy"), "{second}");
    assert_eq!(p.read("out/a.txt"), "alpha\n");
    let meta = |rel: &str| std::fs::symlink_metadata(p.path().join(rel)).unwrap();
    assert_eq!(meta("out/sub/x.bin").permissions().mode() & 0o777, 0o755);
    assert_eq!(meta("out/ro/f.txt").permissions().mode() & 0o777, 0o444);
    assert_eq!(meta("out/ro").permissions().mode() & 0o777, 0o555);
    assert_eq!(std::fs::read_link(p.path().join("out/link")).unwrap().to_str(), Some("a.txt"));
    assert!(meta("out/a.txt").nlink() >= 2, "a hard link into the store's copy");

    // A file written by hand (through the shared inode) makes the copy stale: the next restore
    // extracts from the blob, whose digest is checked, and the bytes are the stored ones.
    std::fs::write(p.path().join("out/a.txt"), "tampered\n").unwrap();
    let third = timings(&p);
    assert!(!third.contains("link from the unpacked copy"), "a stale copy is not used: {third}");
    assert!(third.contains("keep an unpacked copy"), "extracted, and a fresh copy kept: {third}");
    assert_eq!(p.read("out/a.txt"), "alpha\n");

    // A step that re-runs and writes its outputs in place writes private copies.
    p.write("src/extra.txt", "more\n");
    wipe(&p);
    p.run(&["build", "-p", "pipelines/test.ron"]).ok(); // the new entry (extracted? no: it ran)
    assert_eq!(p.read("out/a.txt"), "alpha\nmore\n");
    p.write("src/extra.txt", "");
    wipe(&p);
    timings(&p); // back to the first entry: restored (from its copy or its blob)
    assert_eq!(p.read("out/a.txt"), "alpha\n");
    wipe(&p);
    let again = timings(&p);
    assert!(again.contains("link from the unpacked copy"), "{again}");
    // Re-running in place: `>>` appends to the restored (linked) file.
    let append = r#"Pipeline(name: "l", steps: {"gen": (run: "mkdir -p out && cat src/a.txt >> out/a.txt", inputs: ["src/**"], outputs: ["out/"])})"#;
    let q = Project::new().pipeline(append).file("src/a.txt", "one\n");
    q.run(&["build", "-p", "pipelines/test.ron"]).ok();
    for _ in 0..2 {
        std::fs::remove_dir_all(q.path().join("out")).unwrap();
        q.run(&["build", "-p", "pipelines/test.ron"]).ok(); // extract, then link
    }
    assert_eq!(q.read("out/a.txt"), "one\n");
    q.write("src/a.txt", "two\n");
    q.run(&["build", "-p", "pipelines/test.ron"]).ok(); // runs, appending to out/a.txt
    assert_eq!(q.read("out/a.txt"), "one\ntwo\n");
    q.write("src/a.txt", "one\n");
    q.run(&["build", "-p", "pipelines/test.ron"]).ok(); // the first entry again
    assert_eq!(q.read("out/a.txt"), "one\n", "the store's copy was not written through");

    // gc covers the copies: stats count them, a cap of 0 removes them with the entries.
    let stats = p.run(&["cache", "stats", "--cache-dir", "cache"]).ok();
    assert!(stats.stdout.contains("unpacked copies (restores by hard link): "), "{}", stats.stdout);
    let gc = p.run(&["cache", "gc", "--cache-dir", "cache", "--max-size", "0"]).ok();
    assert!(gc.stdout.contains("unpacked copies removed"), "{}", gc.stdout);
    let left: Vec<_> =
        std::fs::read_dir(p.path().join("cache/unpacked")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
