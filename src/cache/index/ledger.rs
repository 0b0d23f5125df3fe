//! The deploy ledger's tables, behind the index: the SQL of every [`Op`] lives here, with
//! the database's one owner (no raw SQL leaves this module).

use super::{Index, IndexError};
use cairn_core::ledger::*;
use serde_json::{json, Value};

/// Waiters that stopped polling for this long have left the line.
const QUEUE_STALE_MS: i64 = 10_000;

fn int(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

/// Run `op` against `i` in one immediate transaction, at `now` (ms since the epoch, the
/// ledger's clock). The answer's shape is documented on each [`Op`].
impl Index {
    /// Run one deploy-ledger operation in one transaction, at the ledger's clock `now`.
    pub fn apply_ledger(&mut self, op: &Op, now: i64) -> Result<Value, IndexError> {
        apply(self, op, now)
    }
}

fn apply(i: &mut Index, op: &Op, now: i64) -> Result<Value, IndexError> {
    i.immediate(|i| apply_in(i, op, now))
}

fn apply_in(i: &Index, op: &Op, now: i64) -> Result<Value, IndexError> {
    Ok(match op {
        Op::Approve { env, release, approver, comment, expires_at, token, audit } => {
            i.exec(
                "INSERT INTO approvals (env, release, approver, comment, at, expires_at, token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[env, release, approver, comment, &now, expires_at, token],
            )?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'approve', ?4)",
                &[&now, env, approver, audit],
            )?;
            Value::Null
        }
        Op::Approvals { env, release } => {
            let rows = i.rows(
                "SELECT approver, expires_at, comment, token FROM approvals WHERE env = ?1 AND release = ?2 ORDER BY at DESC",
                &[env, release],
            )?;
            let rows: Vec<ApprovalRow> = rows
                .into_iter()
                .map(|r| ApprovalRow {
                    approver: r[0].clone(),
                    expires_at: int(&r[1]),
                    comment: r[2].clone(),
                    token: r[3].clone(),
                })
                .collect();
            json!(rows)
        }
        Op::Audit { env, who, action, detail } => {
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&now, env, who, action, detail],
            )?;
            Value::Null
        }
        Op::LeaseTry { env, run_id, holder, host, pid, ttl_ms } => {
            // The holder asking again (a retried request) keeps its lease.
            if i.exec(
                "UPDATE leases SET expires_at = ?3 WHERE env = ?1 AND run_id = ?2 AND expires_at > ?4",
                &[env, run_id, &(now + ttl_ms), &now],
            )? == 1
            {
                return Ok(json!(LeaseAnswer { acquired: true, holder: None }));
            }
            i.exec(
                "INSERT OR IGNORE INTO lease_queue (env, run_id, since, seen) VALUES (?1, ?2, ?3, ?3)",
                &[env, run_id, &now],
            )?;
            i.exec("UPDATE lease_queue SET seen = ?3 WHERE env = ?1 AND run_id = ?2", &[env, run_id, &now])?;
            i.exec("DELETE FROM lease_queue WHERE env = ?1 AND seen < ?2", &[env, &(now - QUEUE_STALE_MS)])?;
            let current = i.rows("SELECT run_id, holder, expires_at FROM leases WHERE env = ?1", &[env])?;
            let free = current.first().is_none_or(|h| int(&h[2]) <= now);
            let first =
                i.rows("SELECT run_id FROM lease_queue WHERE env = ?1 ORDER BY since, run_id LIMIT 1", &[env])?;
            if free && first.first().is_some_and(|r| r[0] == *run_id) {
                i.exec(
                    "INSERT OR REPLACE INTO leases (env, holder, run_id, host, pid, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    &[env, holder, run_id, host, pid, &now, &(now + ttl_ms)],
                )?;
                i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
                json!(LeaseAnswer { acquired: true, holder: None })
            } else {
                let holder = match current.first() {
                    Some(h) if int(&h[2]) > now => h[1].clone(),
                    _ => "an earlier run".to_string(),
                };
                json!(LeaseAnswer { acquired: false, holder: Some(holder) })
            }
        }
        Op::LeaseRenew { env, run_id, ttl_ms } => {
            let n = i.exec(
                "UPDATE leases SET expires_at = ?3 WHERE env = ?1 AND run_id = ?2",
                &[env, run_id, &(now + ttl_ms)],
            )?;
            json!(n == 1)
        }
        Op::LeaseRelease { env, run_id } => {
            i.exec("DELETE FROM leases WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
            Value::Null
        }
        Op::LeaseLeave { env, run_id } => {
            i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
            Value::Null
        }
        Op::LockStatus { env } => {
            let lease = i
                .rows("SELECT holder, run_id, host, pid, acquired_at, expires_at FROM leases WHERE env = ?1", &[env])?
                .into_iter()
                .next()
                .map(|h| Holder {
                    holder: h[0].clone(),
                    run_id: h[1].clone(),
                    host: h[2].clone(),
                    pid: int(&h[3]),
                    acquired_at: int(&h[4]),
                    expires_at: int(&h[5]),
                });
            let waiting = i
                .rows(
                    "SELECT run_id FROM lease_queue WHERE env = ?1 AND seen >= ?2 ORDER BY since, run_id",
                    &[env, &(now - QUEUE_STALE_MS)],
                )?
                .into_iter()
                .map(|r| r[0].clone())
                .collect();
            let live = lease.as_ref().is_some_and(|h| h.expires_at > now);
            json!(LockInfo { lease, live, waiting })
        }
        Op::LockBreak { env, who, reason } => {
            let was = i.rows("SELECT run_id FROM leases WHERE env = ?1", &[env])?;
            let was = was.first().map(|r| r[0].clone()).unwrap_or_default();
            i.exec("DELETE FROM leases WHERE env = ?1", &[env])?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'lock-release-force', ?4)",
                &[&now, env, who, &format!("{reason} (was {})", if was.is_empty() { "free" } else { &was })],
            )?;
            json!(was)
        }
        Op::RunStart { id, env, release, who, plan, break_glass } => {
            i.exec(
                "INSERT INTO deploy_runs (id, env, release, who, started_at, result, plan, break_glass) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
                &[id, env, release, who, &now, plan, break_glass],
            )?;
            if !break_glass.is_empty() {
                i.exec(
                    "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'break-glass', ?4)",
                    &[&now, env, who, break_glass],
                )?;
            }
            Value::Null
        }
        Op::RunResult { id, result, halt_reason, finished } => {
            let before = i.rows("SELECT result FROM deploy_runs WHERE id = ?1", &[id])?;
            let before = before.first().and_then(|r| r.first()).cloned().unwrap_or_default();
            let event = match (finished, before.as_str()) {
                (false, "halted") => "resumed".to_string(),
                (false, _) => "started".to_string(),
                (true, _) => result.clone(),
            };
            i.exec(
                "INSERT INTO deploy_events (run_id, at, event, detail) VALUES (?1, ?2, ?3, ?4)",
                &[id, &now, &event, halt_reason],
            )?;
            if *finished {
                i.exec(
                    "UPDATE deploy_runs SET result = ?2, halt_reason = ?3, finished_at = ?4 WHERE id = ?1",
                    &[id, result, halt_reason, &now],
                )?;
            } else {
                i.exec(
                    "UPDATE deploy_runs SET result = ?2, halt_reason = ?3 WHERE id = ?1",
                    &[id, result, halt_reason],
                )?;
            }
            Value::Null
        }
        Op::Unfinished { env } => {
            let rows = i.rows(
                "SELECT id, release FROM deploy_runs WHERE env = ?1 AND result IN ('halted', 'running', 'queued') ORDER BY started_at DESC, id DESC LIMIT 1",
                &[env],
            )?;
            json!(rows.first().map(|r| (r[0].clone(), r[1].clone())))
        }
        Op::History { env } => {
            let rows = i.rows(
                "SELECT id, who, release, started_at, result, COALESCE(halt_reason, ''), COALESCE(break_glass, '') FROM deploy_runs WHERE env = ?1 ORDER BY started_at DESC, id DESC",
                &[env],
            )?;
            let mut out: Vec<RunRow> = Vec::with_capacity(rows.len());
            for r in rows {
                let events = i
                    .rows("SELECT at, event, detail FROM deploy_events WHERE run_id = ?1 ORDER BY at, rowid", &[&r[0]])?
                    .into_iter()
                    .map(|e| RunEvent { at: int(&e[0]), event: e[1].clone(), detail: e[2].clone() })
                    .collect();
                out.push(RunRow {
                    id: r[0].clone(),
                    who: r[1].clone(),
                    release: r[2].clone(),
                    started_at: int(&r[3]),
                    result: r[4].clone(),
                    halt_reason: r[5].clone(),
                    break_glass: r[6].clone(),
                    events,
                });
            }
            json!(out)
        }
        Op::Journal { run_id, phase, what, state, detail } => {
            i.exec(
                "INSERT INTO deploy_journal (run_id, seq, at, phase, what, state, detail)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deploy_journal WHERE run_id = ?1), ?2, ?3, ?4, ?5, ?6)",
                &[run_id, &now, phase, what, state, detail],
            )?;
            Value::Null
        }
        Op::DonePhases { run_id } => {
            // A phase is done when its last word is: a region rolled back afterwards, or a
            // traffic share reverted, is not.
            let rows = i.rows(
                "SELECT phase FROM deploy_journal j WHERE run_id = ?1 AND state IN ('done', 'skipped')
                 AND seq = (SELECT MAX(seq) FROM deploy_journal WHERE run_id = ?1 AND phase = j.phase) ORDER BY phase",
                &[run_id],
            )?;
            json!(rows.iter().filter_map(|r| r[0].parse::<usize>().ok()).collect::<Vec<_>>())
        }
        Op::RegionRelease { env, region } => {
            let rows = i.rows("SELECT release FROM region_state WHERE env = ?1 AND region = ?2", &[env, region])?;
            json!(rows.first().map(|r| r[0].clone()))
        }
        Op::RegionSet { env, region, release } => {
            i.exec(
                "INSERT OR REPLACE INTO region_state (env, region, release, at) VALUES (?1, ?2, ?3, ?4)",
                &[env, region, release, &now],
            )?;
            Value::Null
        }
        Op::RegionClear { env, region } => {
            i.exec("DELETE FROM region_state WHERE env = ?1 AND region = ?2", &[env, region])?;
            Value::Null
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let i = Index::open(&d.path().join("ledger.sqlite")).unwrap();
        (d, i)
    }

    fn try_lease(i: &mut Index, run: &str, now: i64) -> LeaseAnswer {
        let op = Op::LeaseTry {
            env: "prod".into(),
            run_id: run.into(),
            holder: format!("holder-{run}"),
            host: "h".into(),
            pid: 1,
            ttl_ms: 1000,
        };
        serde_json::from_value(apply(i, &op, now).unwrap()).unwrap()
    }

    #[test]
    fn the_lease_goes_in_arrival_order_and_expires_by_the_ledgers_clock() {
        let (_d, mut i) = index();
        assert!(try_lease(&mut i, "a", 0).acquired);
        let b = try_lease(&mut i, "b", 10);
        assert_eq!(b, LeaseAnswer { acquired: false, holder: Some("holder-a".into()) });
        assert!(!try_lease(&mut i, "c", 20).acquired);
        // The holder asking again keeps it (a retried request must not lose the lease).
        assert!(try_lease(&mut i, "a", 30).acquired);
        // Expired: b was first in line, so c still waits and b gets it.
        assert!(!try_lease(&mut i, "c", 1100).acquired);
        assert!(try_lease(&mut i, "b", 1100).acquired);
        let renewed: bool = serde_json::from_value(
            apply(&mut i, &Op::LeaseRenew { env: "prod".into(), run_id: "b".into(), ttl_ms: 1000 }, 1500).unwrap(),
        )
        .unwrap();
        assert!(renewed);
        let info: LockInfo =
            serde_json::from_value(apply(&mut i, &Op::LockStatus { env: "prod".into() }, 1600).unwrap()).unwrap();
        assert!(info.live);
        assert_eq!(info.lease.unwrap().run_id, "b");
        assert_eq!(info.waiting, vec!["c".to_string()]);
        let was: String = serde_json::from_value(
            apply(&mut i, &Op::LockBreak { env: "prod".into(), who: "ops".into(), reason: "stuck".into() }, 1700)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(was, "b");
        let renewed: bool = serde_json::from_value(
            apply(&mut i, &Op::LeaseRenew { env: "prod".into(), run_id: "b".into(), ttl_ms: 1000 }, 1800).unwrap(),
        )
        .unwrap();
        assert!(!renewed, "a broken lease is not silently renewed");
        let audit = i.rows("SELECT action, detail FROM audit", &[]).unwrap();
        assert_eq!(audit, vec![vec!["lock-release-force".to_string(), "stuck (was b)".to_string()]]);
    }

    #[test]
    fn ops_round_trip_as_json_and_the_journal_numbers_itself() {
        let op = Op::Journal {
            run_id: "r".into(),
            phase: 2,
            what: "deploy fra".into(),
            state: "done".into(),
            detail: String::new(),
        };
        let text = serde_json::to_string(&op).unwrap();
        assert!(text.starts_with(r#"{"op":"journal""#), "{text}");
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
        let (_d, mut i) = index();
        apply(&mut i, &op, 1).unwrap();
        let again = Op::Journal {
            run_id: "r".into(),
            phase: 0,
            what: "deploy nrt".into(),
            state: "skipped".into(),
            detail: String::new(),
        };
        apply(&mut i, &again, 2).unwrap();
        let done: Vec<usize> =
            serde_json::from_value(apply(&mut i, &Op::DonePhases { run_id: "r".into() }, 3).unwrap()).unwrap();
        assert_eq!(done, vec![0, 2]);
        // A phase undone afterwards (a region rolled back, a traffic share reverted) is not done.
        let undo = Op::Journal {
            run_id: "r".into(),
            phase: 2,
            what: "rollback fra".into(),
            state: "rolled-back".into(),
            detail: String::new(),
        };
        apply(&mut i, &undo, 4).unwrap();
        let done: Vec<usize> =
            serde_json::from_value(apply(&mut i, &Op::DonePhases { run_id: "r".into() }, 5).unwrap()).unwrap();
        assert_eq!(done, vec![0]);
        let seqs = i.rows("SELECT seq FROM deploy_journal WHERE seq < 3 ORDER BY seq", &[]).unwrap();
        assert_eq!(seqs, vec![vec!["1".to_string()], vec!["2".to_string()]]);
        assert!(Op::History { env: "x".into() }.is_read() && !op.is_read());
    }
}
