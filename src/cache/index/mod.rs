//! The SQLite index of the local store. This is the only module that imports rusqlite.
//!
//! WAL mode with a busy timeout, so concurrent cairn processes sharing one store wait for
//! each other instead of failing. Migrations are append-only, keyed on `PRAGMA user_version`:
//! never edit a shipped migration, add a new one.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::inputs::StatEntry;

mod ledger;

/// Append-only: index `i` migrates from user_version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: entries, eviction memory, the stat cache, run history.
    "CREATE TABLE entries (
        key TEXT PRIMARY KEY,
        step TEXT NOT NULL,
        blob TEXT NOT NULL,
        outputs_digest TEXT NOT NULL,
        manifest TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        blob_size INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX entries_step ON entries(step, created_at);
    CREATE INDEX entries_lru ON entries(last_used);
    CREATE TABLE evicted (key TEXT PRIMARY KEY, step TEXT NOT NULL, at INTEGER NOT NULL, why TEXT NOT NULL);
    CREATE TABLE stat_cache (
        root TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        exec INTEGER NOT NULL,
        digest TEXT NOT NULL,
        recorded_ns INTEGER NOT NULL,
        PRIMARY KEY (root, path)
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        pipeline TEXT NOT NULL,
        summary TEXT NOT NULL
    );",
    // 2: what each step last installed in a working tree, to skip restoring outputs in place.
    "CREATE TABLE installed (
        root TEXT NOT NULL,
        step TEXT NOT NULL,
        outputs_digest TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        recorded_ns INTEGER NOT NULL,
        PRIMARY KEY (root, step)
    );",
    // 3: contents of lock files seen as inputs, by digest, for structural `cairn why` diffs.
    "CREATE TABLE snapshots (digest TEXT PRIMARY KEY, content TEXT NOT NULL);",
    // 4: the stat cache as one compact row per project root (loading 20k rows one by one cost
    // more than walking the tree); the row-per-file table of migration 1 is no longer used.
    "CREATE TABLE stat_blobs (root TEXT PRIMARY KEY, data BLOB NOT NULL);
     DELETE FROM stat_cache;",
    // 5: log sizes, so a hit without logs needn't open its blob (-1: unknown).
    "ALTER TABLE entries ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT -1;",
    // 6: deploys: runs and their journal, approvals, leases, what each region runs, the audit log.
    "CREATE TABLE deploy_runs (
        id TEXT PRIMARY KEY, env TEXT NOT NULL, release TEXT NOT NULL, who TEXT NOT NULL,
        started_at INTEGER NOT NULL, finished_at INTEGER, result TEXT NOT NULL, halt_reason TEXT,
        plan TEXT NOT NULL, break_glass TEXT
    );
    CREATE TABLE deploy_journal (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL, phase INTEGER NOT NULL,
        what TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE approvals (
        env TEXT NOT NULL, release TEXT NOT NULL, approver TEXT NOT NULL, comment TEXT NOT NULL,
        at INTEGER NOT NULL, expires_at INTEGER NOT NULL
    );
    CREATE TABLE leases (
        env TEXT PRIMARY KEY, holder TEXT NOT NULL, run_id TEXT NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, acquired_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
    );
    CREATE TABLE lease_queue (env TEXT NOT NULL, run_id TEXT NOT NULL, since INTEGER NOT NULL, seen INTEGER NOT NULL,
        PRIMARY KEY (env, run_id));
    CREATE TABLE region_state (env TEXT NOT NULL, region TEXT NOT NULL, release TEXT NOT NULL, at INTEGER NOT NULL,
        PRIMARY KEY (env, region));
    CREATE TABLE audit (at INTEGER NOT NULL, env TEXT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);",
    // 7: scan journals (what the last walk saw, per set of walk rules), for the no-op fast path.
    "CREATE TABLE scan_journals (sig TEXT PRIMARY KEY, data BLOB NOT NULL, at INTEGER NOT NULL);",
    // 8: signed approvals keep their token, verified again whenever a gate is checked.
    "ALTER TABLE approvals ADD COLUMN token TEXT NOT NULL DEFAULT '';",
    // 9: scan journals moved to files (`journals/` in the store); the table stays for older
    // binaries sharing the store, emptied here.
    "DELETE FROM scan_journals;",
    // 10: the key each step last used (ran or restored) in a working tree: "why did this
    // miss" compares with it, not with the newest entry (which after a revert is another
    // branch's).
    "CREATE TABLE last_keys (root TEXT NOT NULL, step TEXT NOT NULL, key TEXT NOT NULL, at INTEGER NOT NULL,
        PRIMARY KEY (root, step));",
    // 11: what happened to each deploy run, in order (started, halted and why, resumed,
    // finished): a run's row holds only its latest result.
    "CREATE TABLE deploy_events (run_id TEXT NOT NULL, at INTEGER NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL);
     CREATE INDEX deploy_events_run ON deploy_events(run_id, at);",
];

fn encode_stat_cache(map: &HashMap<String, StatEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(map.len() * 100);
    for (path, e) in map {
        let Some(digest) = crate::inputs::unhex32(&e.digest) else { continue };
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        for v in [e.size, e.mtime_ns as u64, e.ctime_ns as u64, e.ino, e.recorded_ns as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(e.exec));
        out.extend_from_slice(&digest);
    }
    out
}

fn decode_stat_cache(data: &[u8]) -> HashMap<String, StatEntry> {
    let mut map = HashMap::new();
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Option<&[u8]> {
        let s = data.get(*i..*i + n)?;
        *i += n;
        Some(s)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    while i < data.len() {
        let Some(len) = take(&mut i, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else {
            break;
        };
        let Some(path) = take(&mut i, len).and_then(|b| std::str::from_utf8(b).ok()).map(String::from) else { break };
        let Some(nums) = take(&mut i, 40) else { break };
        let Some(exec) = take(&mut i, 1).map(|b| b[0] != 0) else { break };
        let Some(d) = take(&mut i, 32).and_then(|d| <&[u8; 32]>::try_from(d).ok()) else { break };
        let digest = crate::inputs::hex32(d);
        map.insert(
            path,
            StatEntry {
                size: u64_at(&nums[0..8]),
                mtime_ns: u64_at(&nums[8..16]) as i64,
                ctime_ns: u64_at(&nums[16..24]) as i64,
                ino: u64_at(&nums[24..32]),
                recorded_ns: u64_at(&nums[32..40]) as i64,
                exec,
                digest,
            },
        );
    }
    map
}

/// One row of `entries`.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub step: String,
    pub blob: String,
    pub outputs_digest: String,
    /// The key manifest (JSON); `None` when the row was read without it ([`Index::lookup`]).
    pub manifest: Option<String>,
    pub duration_ms: u64,
    pub blob_size: u64,
    pub created_at: i64,
    pub last_used: i64,
    pub pinned: bool,
    pub log_bytes: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("store index {context}: {source}")]
pub struct IndexError {
    context: String,
    source: rusqlite::Error,
}

fn ctx(context: &str) -> impl FnOnce(rusqlite::Error) -> IndexError + '_ {
    move |source| IndexError { context: context.to_string(), source }
}

pub struct Index {
    conn: Connection,
}

const COLUMNS: &str =
    "key, step, blob, outputs_digest, manifest, duration_ms, blob_size, created_at, last_used, pinned, log_bytes";
/// [`COLUMNS`] without the manifest, which is tens of kilobytes for a step with hundreds of
/// inputs and which a hit never needs.
const BRIEF_COLUMNS: &str =
    "key, step, blob, outputs_digest, NULL, duration_ms, blob_size, created_at, last_used, pinned, log_bytes";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok(Row {
        key: r.get(0)?,
        step: r.get(1)?,
        blob: r.get(2)?,
        outputs_digest: r.get(3)?,
        manifest: r.get(4)?,
        duration_ms: r.get::<_, i64>(5)? as u64,
        blob_size: r.get::<_, i64>(6)? as u64,
        created_at: r.get(7)?,
        last_used: r.get(8)?,
        pinned: r.get::<_, i64>(9)? != 0,
        log_bytes: r.get(10)?,
    })
}

impl IndexError {
    /// A damage found by other means (an earlier run's failed query).
    pub fn damaged(why: &str) -> IndexError {
        IndexError {
            context: why.to_string(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some("database disk image is malformed".into()),
            ),
        }
    }

    /// Is the database file itself damaged (not a database, corrupt pages), as opposed to
    /// being busy, locked or on a full disk?
    pub fn is_damaged(&self) -> bool {
        use rusqlite::ffi::ErrorCode;
        matches!(
            &self.source,
            rusqlite::Error::SqliteFailure(e, _) if matches!(e.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        )
    }
}

impl Index {
    /// Open an index the process may not write (a read-only store): no locks, no WAL, no
    /// migrations; every write fails, which callers treat as a warning.
    pub fn open_read_only(path: &Path) -> Result<Index, IndexError> {
        use rusqlite::OpenFlags;
        // Read-only with its write-ahead log (whose index file the store keeps), so the newest
        // entries are seen; failing that (no -shm to read), the database file alone, immutable.
        let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()
            .filter(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).is_ok());
        let conn = match plain {
            Some(c) => c,
            None => {
                let uri = format!("file:{}?immutable=1", path.display());
                Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(ctx("open read-only"))?
            }
        };
        let idx = Index { conn };
        if idx.schema_version() != MIGRATIONS.len() as i64 {
            return Err(IndexError {
                context: format!(
                    "is read-only and at schema {} (this cairn needs {})",
                    idx.schema_version(),
                    MIGRATIONS.len()
                ),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        Ok(idx)
    }

    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let conn = Connection::open(path).map_err(ctx("open"))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(ctx("busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(ctx("WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(ctx("synchronous"))?;
        // A no-op build opens the index, reads it, writes a few pages and closes it. By default
        // the last connection to close checkpoints the WAL into the database and deletes it:
        // four fsyncs and a read of every changed page, on every run. The WAL is kept instead
        // and checkpointed by SQLite once it passes its size threshold (1000 pages), so that
        // cost is paid once every many runs. Reads go through a memory map, not a pread per page.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(ctx("keep the WAL"))?;
        conn.pragma_update(None, "mmap_size", 256i64 << 20).map_err(ctx("mmap"))?;
        let mut idx = Index { conn };
        idx.migrate()?;
        // A damaged file can open and even migrate (the header is intact) yet fail on the
        // first page it reads: read the schema once, which touches every table's root page.
        idx.conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get::<_, i64>(0))
            .map_err(ctx("read schema"))?;
        Ok(idx)
    }

    fn migrate(&mut self) -> Result<(), IndexError> {
        if self.schema_version() == MIGRATIONS.len() as i64 {
            return Ok(()); // up to date: no write transaction needed
        }
        let tx =
            self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(ctx("migrate"))?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(ctx("read version"))?;
        if version as usize > MIGRATIONS.len() {
            return Err(IndexError {
                context: format!("was written by a newer cairn (schema {version})"),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m).map_err(ctx("migration"))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(ctx("set version"))?;
        }
        tx.commit().map_err(ctx("commit migration"))
    }

    pub fn schema_version(&self) -> i64 {
        self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or(-1)
    }

    pub fn get(&self, key: &str) -> Result<Option<Row>, IndexError> {
        self.conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM entries WHERE key = ?1"))
            .and_then(|mut st| st.query_row([key], row).optional())
            .map_err(ctx("lookup"))
    }

    /// [`Index::get`] without the manifest: the lookup of every step of every build.
    pub fn lookup(&self, key: &str) -> Result<Option<Row>, IndexError> {
        self.conn
            .prepare_cached(&format!("SELECT {BRIEF_COLUMNS} FROM entries WHERE key = ?1"))
            .and_then(|mut st| st.query_row([key], row).optional())
            .map_err(ctx("lookup"))
    }

    /// The newest entry of a step other than `except_key`.
    pub fn latest_for_step(&self, step: &str, except_key: &str) -> Result<Option<Row>, IndexError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM entries WHERE step = ?1 AND key != ?2 ORDER BY created_at DESC, rowid DESC LIMIT 1"
                ),
                [step, except_key],
                row,
            )
            .optional()
            .map_err(ctx("lookup by step"))
    }

    pub fn insert(&self, r: &Row) -> Result<(), IndexError> {
        self.conn
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO entries ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    r.key,
                    r.step,
                    r.blob,
                    r.outputs_digest,
                    r.manifest.as_deref().unwrap_or_default(),
                    r.duration_ms as i64,
                    r.blob_size as i64,
                    r.created_at,
                    r.last_used,
                    r.pinned as i64,
                    r.log_bytes
                ],
            )
            .map_err(ctx("insert"))?;
        self.conn.execute("DELETE FROM evicted WHERE key = ?1", [&r.key]).map_err(ctx("insert"))?;
        Ok(())
    }

    /// Mark many entries used, in one transaction (a run's hits).
    pub fn touch_many(&mut self, keys: &[&str], now: i64) -> Result<(), IndexError> {
        let tx = self.conn.transaction().map_err(ctx("touch"))?;
        {
            let mut st = tx.prepare_cached("UPDATE entries SET last_used = ?2 WHERE key = ?1").map_err(ctx("touch"))?;
            for k in keys {
                st.execute(params![k, now]).map_err(ctx("touch"))?;
            }
        }
        tx.commit().map_err(ctx("touch"))
    }

    pub fn touch(&self, key: &str, now: i64) -> Result<(), IndexError> {
        self.conn
            .execute("UPDATE entries SET last_used = ?2 WHERE key = ?1", params![key, now])
            .map_err(ctx("touch"))?;
        Ok(())
    }

    /// Remove an entry, remembering why (so a later miss can say "evicted").
    pub fn remove(&self, key: &str, why: &str, now: i64) -> Result<Option<Row>, IndexError> {
        let old = self.get(key)?;
        if let Some(r) = &old {
            self.conn.execute("DELETE FROM entries WHERE key = ?1", [key]).map_err(ctx("remove"))?;
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO evicted (key, step, at, why) VALUES (?1, ?2, ?3, ?4)",
                    params![key, r.step, now, why],
                )
                .map_err(ctx("remove"))?;
        }
        Ok(old)
    }

    pub fn eviction(&self, key: &str) -> Result<Option<String>, IndexError> {
        self.conn
            .query_row("SELECT why FROM evicted WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(ctx("eviction"))
    }

    pub fn all(&self) -> Result<Vec<Row>, IndexError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM entries ORDER BY last_used ASC, rowid ASC"))
            .map_err(ctx("list"))?;
        let rows = st.query_map([], row).map_err(ctx("list"))?.collect::<Result<Vec<_>, _>>().map_err(ctx("list"));
        rows
    }

    pub fn blob_refs(&self, blob: &str) -> Result<u64, IndexError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM entries WHERE blob = ?1", [blob], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(ctx("count"))
    }

    pub fn set_pinned(&self, key: &str, pinned: bool) -> Result<bool, IndexError> {
        let n = self
            .conn
            .execute("UPDATE entries SET pinned = ?2 WHERE key = ?1", params![key, pinned as i64])
            .map_err(ctx("pin"))?;
        Ok(n > 0)
    }

    pub fn load_stat_cache(&self, root: &str) -> Result<HashMap<String, StatEntry>, IndexError> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT data FROM stat_blobs WHERE root = ?1", [root], |r| r.get(0))
            .optional()
            .map_err(ctx("stat cache"))?;
        Ok(data.map(|d| decode_stat_cache(&d)).unwrap_or_default())
    }

    pub fn save_journal(&self, sig: &str, data: &[u8], now_ms: i64) -> Result<(), IndexError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO scan_journals (sig, data, at) VALUES (?1, ?2, ?3)",
                params![sig, data, now_ms],
            )
            .map_err(ctx("scan journal"))?;
        self.conn
            .execute("DELETE FROM scan_journals WHERE at < ?1", [now_ms - 30 * 86_400_000])
            .map_err(ctx("scan journal"))?;
        Ok(())
    }

    /// Merge `rows` into the stat cache of `root`.
    pub fn save_stat_cache(
        &mut self,
        root: &str,
        mut base: HashMap<String, StatEntry>,
        rows: &[(String, StatEntry)],
    ) -> Result<(), IndexError> {
        if rows.is_empty() {
            return Ok(());
        }
        for (path, e) in rows {
            base.insert(path.clone(), e.clone());
        }
        self.conn
            .execute(
                "INSERT OR REPLACE INTO stat_blobs (root, data) VALUES (?1, ?2)",
                params![root, encode_stat_cache(&base)],
            )
            .map_err(ctx("stat cache"))?;
        Ok(())
    }

    pub fn installed(&self, root: &str, step: &str) -> Result<Option<(String, String, i64)>, IndexError> {
        self.conn
            .prepare_cached(
                "SELECT outputs_digest, fingerprint, recorded_ns FROM installed WHERE root = ?1 AND step = ?2",
            )
            .and_then(|mut st| st.query_row([root, step], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
            .map_err(ctx("installed"))
    }

    /// Remember the key each step used in `root` (unchanged rows are not rewritten).
    pub fn set_last_keys(&mut self, root: &str, pairs: &[(&str, &str)], now: i64) -> Result<(), IndexError> {
        let tx = self.conn.transaction().map_err(ctx("last keys"))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO last_keys (root, step, key, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (root, step) DO UPDATE SET key = excluded.key, at = excluded.at
                     WHERE last_keys.key != excluded.key",
                )
                .map_err(ctx("last keys"))?;
            for (step, key) in pairs {
                st.execute(params![root, step, key, now]).map_err(ctx("last keys"))?;
            }
        }
        tx.commit().map_err(ctx("last keys"))
    }

    /// The key `step` last used in `root`.
    pub fn last_key(&self, root: &str, step: &str) -> Result<Option<String>, IndexError> {
        self.conn
            .prepare_cached("SELECT key FROM last_keys WHERE root = ?1 AND step = ?2")
            .and_then(|mut st| st.query_row(params![root, step], |r| r.get(0)).optional())
            .map_err(ctx("last key"))
    }

    pub fn set_installed(&self, root: &str, step: &str, digest: &str, fp: &str, at: i64) -> Result<(), IndexError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO installed (root, step, outputs_digest, fingerprint, recorded_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![root, step, digest, fp, at],
            )
            .map_err(ctx("installed"))?;
        Ok(())
    }

    pub fn save_snapshot(&self, digest: &str, content: &str) -> Result<(), IndexError> {
        self.conn
            .execute("INSERT OR IGNORE INTO snapshots (digest, content) VALUES (?1, ?2)", params![digest, content])
            .map_err(ctx("snapshot"))?;
        Ok(())
    }

    pub fn snapshot(&self, digest: &str) -> Result<Option<String>, IndexError> {
        self.conn
            .query_row("SELECT content FROM snapshots WHERE digest = ?1", [digest], |r| r.get(0))
            .optional()
            .map_err(ctx("snapshot"))
    }

    /// Run one statement (the ledger's SQL in `ledger.rs`).
    fn exec(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<usize, IndexError> {
        self.conn.execute(sql, args).map_err(ctx("deploy"))
    }

    /// Rows of strings (NULL as empty) for a query.
    fn rows(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Vec<String>>, IndexError> {
        let mut st = self.conn.prepare(sql).map_err(ctx("deploy"))?;
        let n = st.column_count();
        let rows = st
            .query_map(args, |r| {
                (0..n)
                    .map(|i| {
                        let v: rusqlite::types::Value = r.get(i)?;
                        Ok(match v {
                            rusqlite::types::Value::Null => String::new(),
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Real(f) => f.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            rusqlite::types::Value::Blob(_) => String::new(),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(ctx("deploy"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx("deploy"));
        rows
    }

    /// Run `f` in an immediate (write-locking) transaction.
    fn immediate<T>(&mut self, f: impl FnOnce(&Index) -> Result<T, IndexError>) -> Result<T, IndexError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(ctx("deploy"))?;
        let r = f(self);
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(ctx("deploy"))?;
        r
    }

    pub fn save_run(&self, id: &str, started_at: i64, pipeline: &str, summary: &str) -> Result<(), IndexError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO runs (id, started_at, pipeline, summary) VALUES (?1, ?2, ?3, ?4)",
                params![id, started_at, pipeline, summary],
            )
            .map_err(ctx("save run"))?;
        Ok(())
    }

    /// The newest `limit` run summaries, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<(String, String)>, IndexError> {
        let mut st = self
            .conn
            .prepare("SELECT id, summary FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1")
            .map_err(ctx("runs"))?;
        let rows = st
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(ctx("runs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx("runs"));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cache_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&t.path().join("i.sqlite")).unwrap();
        let e = StatEntry {
            size: 5,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_000_223_456_789,
            ino: 42,
            exec: true,
            digest: blake3::hash(b"x").to_hex().to_string(),
            recorded_ns: 1_700_000_100_000_000_000,
        };
        idx.save_stat_cache("/r", HashMap::new(), &[("a/b.txt".into(), e.clone())]).unwrap();
        let m = idx.load_stat_cache("/r").unwrap();
        assert_eq!(m["a/b.txt"], e);
        assert!(idx.load_stat_cache("/other").unwrap().is_empty());
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("index.sqlite");
        let a = Index::open(&p).unwrap();
        assert_eq!(a.schema_version(), MIGRATIONS.len() as i64);
        drop(a);
        let b = Index::open(&p).unwrap();
        assert_eq!(b.schema_version(), MIGRATIONS.len() as i64);
    }
}
