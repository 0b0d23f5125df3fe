//! Deploy gates as verdicts: pure functions of the environment, the release, the approvals
//! on record and the time, with the clock and the time-zone lookup passed in.

use crate::model::{Approval as ApprovalGate, Environment};
use crate::plan::trigger::EnvPlan;
use std::collections::BTreeMap;

/// A time zone's offset (minutes east of UTC) at an instant; the caller's lookup.
pub type TzOffset<'a> = dyn Fn(&str, i64) -> Option<i32> + 'a;

/// An approval on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: String,
    pub expires_at: i64,
    pub comment: String,
}

/// The approval gate's verdict for `actor` at `now_ms`: `Ok(who approved)` or `Err(why not)`.
pub fn approval_verdict(gate: &ApprovalGate, rows: &[Approval], actor: &str, now_ms: i64) -> Result<String, String> {
    let valid = rows.iter().find(|r| {
        r.expires_at > now_ms
            && gate.reviewers.contains(&r.approver)
            && (gate.allow_self_approval || r.approver != actor)
    });
    match valid {
        Some(r) => Ok(format!("approved by {} ({})", r.approver, r.comment)),
        None if rows.is_empty() => Err("no approval for this release".to_string()),
        None if rows.iter().all(|r| r.expires_at <= now_ms) => Err("its approval has expired".to_string()),
        None if rows.iter().any(|r| r.approver == actor) && !gate.allow_self_approval => {
            Err(format!("{actor} may not approve their own deploy"))
        }
        None => Err("no approval from a designated reviewer".to_string()),
    }
}

/// The release name: blake3 over required step keys, the rendered deploy configuration and
/// secret names (never values).
pub fn release_hash(env_name: &str, keys: &BTreeMap<String, String>, plan: &EnvPlan) -> String {
    let config = serde_json::json!({
        "environment": env_name,
        "keys": keys,
        "strategy": plan.strategy,
        "regions": plan.regions,
        "phases": plan.phases,
        "migration": plan.migration,
        "secrets": plan.secrets,
    });
    blake3::hash(config.to_string().as_bytes()).to_hex()[..16].to_string()
}

/// Is `at_unix` inside one of the windows? (`None`: no windows, always open.)
pub fn window_open(env: &Environment, at_unix: i64, tz: &TzOffset) -> Result<Option<bool>, String> {
    if env.windows.is_empty() {
        return Ok(None);
    }
    for w in &env.windows {
        let off = tz(&w.timezone, at_unix).ok_or_else(|| format!("unknown time zone `{}`", w.timezone))?;
        let local = at_unix + i64::from(off) * 60;
        let minutes = (local.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday.
        let weekday = ((local.div_euclid(86_400) + 3).rem_euclid(7)) as usize; // 0 = Monday
        let day = [
            crate::model::Weekday::Mon,
            crate::model::Weekday::Tue,
            crate::model::Weekday::Wed,
            crate::model::Weekday::Thu,
            crate::model::Weekday::Fri,
            crate::model::Weekday::Sat,
            crate::model::Weekday::Sun,
        ][weekday];
        let (start, end) = (
            crate::model::validate::parse_hhmm(&w.start).unwrap_or(0),
            crate::model::validate::parse_hhmm(&w.end).unwrap_or(0),
        );
        if w.days.contains(&day) && minutes >= start && minutes < end {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

/// Parse an RFC 3339 instant to unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if !crate::model::validate::looks_rfc3339(s) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let tail = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let off = if tail == "Z" {
        0
    } else {
        let m = crate::model::validate::parse_hhmm(&tail[1..])? as i64;
        if tail.starts_with('-') {
            -m
        } else {
            m
        }
    };
    Some(days * 86_400 + h * 3600 + mi * 60 + se - off * 60)
}

/// Why the environment is closed at `now_unix` (windows, freezes); empty when open.
pub fn closed_now(env: &Environment, now_unix: i64, tz: &TzOffset) -> Result<Vec<String>, String> {
    let mut closed = Vec::new();
    if window_open(env, now_unix, tz)? == Some(false) {
        closed.push("outside its deploy windows".to_string());
    }
    for f in &env.freezes {
        if let (Some(from), Some(until)) = (parse_rfc3339(&f.from), parse_rfc3339(&f.until)) {
            if now_unix >= from && now_unix < until {
                closed.push(format!("in a freeze ({})", f.reason));
            }
        }
    }
    Ok(closed)
}

/// Whether the environment deploys from `branch` (no branch policy: any).
pub fn branch_allowed(env: &Environment, branch: Option<&str>) -> bool {
    env.branches.is_empty()
        || branch.is_some_and(|b| env.branches.iter().any(|p| crate::plan::trigger::branch_matches(p, b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ron_text: &str) -> Environment {
        ron::from_str(ron_text).unwrap()
    }

    #[test]
    fn windows_freezes_and_approvals_decide_from_the_values_given() {
        let utc = |_: &str, _: i64| Some(0);
        let e = env(
            r#"(deploy: "x", windows: [(days: [Mon, Tue, Wed, Thu, Fri], start: "09:00", end: "17:00", timezone: "UTC")],
                       freezes: [(from: "2026-12-20T00:00:00Z", until: "2027-01-04T00:00:00Z", reason: "holidays")])"#,
        );
        let monday_10 = parse_rfc3339("2026-11-30T10:00:00Z").unwrap();
        assert_eq!(window_open(&e, monday_10, &utc), Ok(Some(true)));
        assert_eq!(window_open(&e, monday_10 + 8 * 3600, &utc), Ok(Some(false)));
        // The same instant is 19:00 in Tokyo: closed there.
        assert_eq!(window_open(&e, monday_10, &|_: &str, _: i64| Some(540)), Ok(Some(false)));
        assert!(window_open(&e, monday_10, &|_: &str, _: i64| None).is_err(), "an unknown zone is an error");
        let xmas = parse_rfc3339("2026-12-24T10:00:00Z").unwrap();
        assert_eq!(closed_now(&e, xmas, &utc).unwrap(), ["in a freeze (holidays)"]);
        let gate: ApprovalGate = ron::from_str(r#"(reviewers: ["lead"])"#).unwrap();
        let row = |who: &str, exp: i64| Approval { approver: who.into(), expires_at: exp, comment: "ok".into() };
        assert_eq!(approval_verdict(&gate, &[row("lead", 100)], "dev", 50), Ok("approved by lead (ok)".into()));
        assert_eq!(approval_verdict(&gate, &[row("lead", 100)], "dev", 150), Err("its approval has expired".into()));
        assert_eq!(
            approval_verdict(&gate, &[row("lead", 100)], "lead", 50),
            Err("lead may not approve their own deploy".into())
        );
        assert_eq!(approval_verdict(&gate, &[], "dev", 50), Err("no approval for this release".into()));
        assert!(branch_allowed(&env(r#"(deploy: "x", branches: ["main"])"#), Some("main")));
        assert!(!branch_allowed(&env(r#"(deploy: "x", branches: ["main"])"#), Some("dev")));
    }
}
