//! Keeping the store in shape: `cairn cache gc` (evict least recently used entries above a
//! cap, remove orphans and crash leftovers) and `cairn cache verify` (re-hash every blob, drop
//! what is corrupt).

use super::*;

impl Store {
    /// Garbage collection: evict least recently used, unpinned entries until the store is
    /// under `max_bytes`; remove blobs no entry references and leftovers in `tmp/`.
    pub fn gc(&self, max_bytes: u64, dry_run: bool) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let entries = self.entries()?;
        let mut blob_sizes: std::collections::BTreeMap<String, u64> = Default::default();
        for e in &entries {
            blob_sizes.insert(e.blob.clone(), e.blob_size);
        }
        // Unpacked copies (restores by hard link) count too, and go first: they are a cache
        // of the cache, least recently used first.
        let copies = self.unpacked_copies();
        let mut total: u64 = blob_sizes.values().sum::<u64>() + copies.iter().map(|c| c.1).sum::<u64>();
        report.before_bytes = total;
        let mut copy_bytes: std::collections::BTreeMap<&str, u64> =
            copies.iter().map(|(b, n, _)| (b.as_str(), *n)).collect();
        for (blob, bytes, _) in &copies {
            if total <= max_bytes {
                break;
            }
            copy_bytes.remove(blob.as_str());
            report.unpacked_dropped += 1;
            total -= bytes;
            if !dry_run {
                self.drop_unpacked(blob);
            }
        }
        let mut live_refs: std::collections::BTreeMap<String, usize> = Default::default();
        for e in &entries {
            *live_refs.entry(e.blob.clone()).or_default() += 1;
        }
        for e in &entries {
            if total <= max_bytes {
                break;
            }
            if e.pinned {
                continue;
            }
            report.evicted.push((e.step.clone(), e.key.clone(), e.blob_size));
            let refs = live_refs.get_mut(&e.blob).expect("counted above");
            *refs -= 1;
            if *refs == 0 {
                total -= e.blob_size + copy_bytes.remove(e.blob.as_str()).unwrap_or(0);
            }
            if !dry_run {
                self.drop_entry(&e.key, "evicted")?;
            }
        }
        report.after_bytes = total;
        // Orphan blobs and temp files.
        let referenced: std::collections::BTreeSet<String> =
            self.entries()?.into_iter().map(|e| e.blob).collect::<std::collections::BTreeSet<_>>();
        if let Ok(shards) = fs::read_dir(self.dir.join("blobs")) {
            for shard in shards.flatten() {
                for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    let digest = name.trim_end_matches(".tar.zst");
                    if !referenced.contains(digest) {
                        report.orphans += 1;
                        if !dry_run {
                            let _ = fs::remove_file(f.path());
                        }
                    }
                }
            }
        }
        // Unpacked copies of blobs no entry references, and copies without a manifest.
        for f in fs::read_dir(self.dir.join("unpacked")).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let blob = name.trim_end_matches(".json");
            let kept = referenced.contains(blob) && self.dir.join("unpacked").join(format!("{blob}.json")).exists();
            if !kept {
                report.orphans += 1;
                if !dry_run {
                    let _ = archive::remove_any(&f.path());
                }
            }
        }
        for f in fs::read_dir(self.tmp_dir()).into_iter().flatten().flatten() {
            report.orphans += 1;
            if !dry_run {
                let _ = archive::remove_any(&f.path());
            }
        }
        Ok(report)
    }

    /// Re-hash every blob; drop entries whose blob is missing or corrupt.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut checked: std::collections::BTreeMap<String, Option<String>> = Default::default();
        for e in self.entries()? {
            let problem = checked
                .entry(e.blob.clone())
                .or_insert_with(|| {
                    let path = self.blob_path(&e.blob);
                    match archive::open_blob(&path) {
                        Err(err) => Some(format!("blob missing or not a file: {err}")),
                        Ok(f) => {
                            let mut h = blake3::Hasher::new();
                            match h.update_reader(f) {
                                Err(err) => Some(format!("blob unreadable: {err}")),
                                Ok(_) => {
                                    let found = h.finalize().to_hex().to_string();
                                    (found != e.blob).then(|| format!("digest mismatch: found {found}"))
                                }
                            }
                        }
                    }
                })
                .clone();
            report.entries += 1;
            if let Some(p) = problem {
                self.drop_entry(&e.key, &format!("corrupt: {p}"))?;
                report.corrupt.push((e.step.clone(), e.key.clone(), p));
            }
        }
        report.blobs = checked.len() as u64;
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub evicted: Vec<(String, String, u64)>,
    pub orphans: u64,
    /// Unpacked copies removed to get under the cap.
    pub unpacked_dropped: u64,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    pub blobs: u64,
    pub corrupt: Vec<(String, String, String)>,
}
