//! Deploy gates with the world plugged in: the clock, the system's time zones, the ledger's
//! approvals (the verdicts themselves are pure: `cairn_core::gates`), and signed approvals.

use super::*;

// ---------------------------------------------------------------------------------------------
// Gates: the verdicts are pure (`cairn_core::gates`); here they get the clock, the system's
// time zones and the ledger.

pub use cairn_core::gates::{branch_allowed, parse_rfc3339, release_hash};

/// Is `at_unix` inside one of the windows? (`None`: no windows, always open.)
pub fn window_open(env: &Environment, at_unix: i64) -> Result<Option<bool>, String> {
    cairn_core::gates::window_open(env, at_unix, &tz_offset_minutes)
}

/// Why the environment is closed at `now_unix` (windows, freezes); empty when open.
pub fn closed_now(env: &Environment, now_unix: i64) -> Result<Vec<String>, String> {
    cairn_core::gates::closed_now(env, now_unix, &tz_offset_minutes)
}

/// Minutes east of UTC for a window's time zone (IANA names are asked of the system's zoneinfo).
pub fn tz_offset_minutes(tz: &str, at_unix: i64) -> Option<i32> {
    if tz == "UTC" || tz == "Z" {
        return Some(0);
    }
    if let Some(rest) = tz.strip_prefix(['+', '-']) {
        let m = crate::model::validate::parse_hhmm(rest)? as i32;
        return Some(if tz.starts_with('-') { -m } else { m });
    }
    let out =
        std::process::Command::new("date").env("TZ", tz).args([&format!("--date=@{at_unix}"), "+%z"]).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !std::path::Path::new("/usr/share/zoneinfo").join(tz).exists() || s.len() != 5 {
        return None;
    }
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let h: i32 = s[1..3].parse().ok()?;
    let m: i32 = s[3..5].parse().ok()?;
    Some(sign * (h * 60 + m))
}

pub struct GateInput<'a> {
    pub env_name: &'a str,
    pub env: &'a Environment,
    pub release: &'a str,
    pub branch: Option<&'a str>,
    pub actor: &'a str,
    pub now_unix: i64,
    pub break_glass: Option<&'a str>,
}

/// The approval gate of `release`: `Ok(Ok(note))` when a valid approval exists (who, and
/// their comment), `Ok(Err(why))` when none does. No approval configured: always open.
pub fn approval_state(
    ledger: &Ledger,
    env_name: &str,
    env: &Environment,
    release: &str,
    actor: &str,
) -> Result<Result<String, String>, DeployError> {
    let Some(a) = &env.approval else { return Ok(Ok("no approval required".into())) };
    let mut rows: Vec<ApprovalRow> =
        ledger.call(Op::Approvals { env: env_name.to_string(), release: release.to_string() })?;
    if !a.keys.is_empty() {
        // Only approvals whose signature still verifies, for exactly this row, count.
        let trusted = crate::keys::Trusted::parse(&a.keys).map_err(DeployError::Gate)?;
        rows.retain(|r| {
            SignedApproval::verify(&r.token, &trusted).is_ok_and(|s| {
                s.env == env_name && s.release == release && s.approver == r.approver && s.expires_at == r.expires_at
            })
        });
        if rows.is_empty() {
            return Ok(Err("no signed approval for this release".to_string()));
        }
    }
    let rows: Vec<cairn_core::gates::Approval> = rows
        .into_iter()
        .map(|r| cairn_core::gates::Approval { approver: r.approver, expires_at: r.expires_at, comment: r.comment })
        .collect();
    Ok(cairn_core::gates::approval_verdict(a, &rows, actor, now_ms()))
}

/// An approval signed by a reviewer's key, carried to CI as a token:
/// `cairn-approval-v1.BASE64(JSON).NAME:BASE64(SIGNATURE)`, the signature over the JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedApproval {
    pub env: String,
    pub release: String,
    pub approver: String,
    pub comment: String,
    /// ms since the epoch.
    pub expires_at: i64,
}

const TOKEN_PREFIX: &str = "cairn-approval-v1.";

impl SignedApproval {
    pub fn sign(&self, key: &crate::keys::Secret) -> String {
        let body = serde_json::to_string(self).expect("approvals serialise");
        format!("{TOKEN_PREFIX}{}.{}", crate::keys::b64(body.as_bytes()), key.sign(body.as_bytes()))
    }

    /// Parse a token and check its signature against `trusted`; the signer must be the
    /// approver it names.
    pub fn verify(token: &str, trusted: &crate::keys::Trusted) -> Result<SignedApproval, String> {
        let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or("not a cairn approval token")?;
        let (body, sig) = rest.split_once('.').ok_or("malformed approval token")?;
        let body = crate::keys::unb64(body).ok_or("malformed approval token")?;
        trusted.verify(Some(sig), &body)?;
        let a: SignedApproval = serde_json::from_slice(&body).map_err(|_| "malformed approval token")?;
        let signer = sig.rsplit_once(':').map(|(n, _)| n).unwrap_or_default();
        if signer != a.approver {
            return Err(format!("signed by `{signer}` on behalf of `{}`", a.approver));
        }
        Ok(a)
    }
}

/// Check a signed approval for `env` and record it (with its token, which every later gate
/// check verifies again).
pub fn accept_signed_approval(
    ledger: &Ledger,
    env_name: &str,
    env: &Environment,
    token: &str,
) -> Result<SignedApproval, DeployError> {
    let refuse = |why: String| DeployError::Gate(format!("error: the approval token was refused: {why}"));
    let Some(a) = &env.approval else { return Err(refuse(format!("`{env_name}` needs no approval"))) };
    if a.keys.is_empty() {
        return Err(refuse(format!(
            "`{env_name}` lists no reviewer keys (approval.keys), so signatures can't be checked"
        )));
    }
    let trusted = crate::keys::Trusted::parse(&a.keys).map_err(refuse)?;
    let s = SignedApproval::verify(token, &trusted).map_err(refuse)?;
    if s.env != env_name {
        return Err(refuse(format!("it approves `{}`, not `{env_name}`", s.env)));
    }
    if !a.reviewers.contains(&s.approver) {
        return Err(refuse(format!("{} is not a reviewer of `{env_name}`", s.approver)));
    }
    ledger.exec(Op::Approve {
        env: s.env.clone(),
        release: s.release.clone(),
        approver: s.approver.clone(),
        comment: s.comment.clone(),
        expires_at: s.expires_at,
        token: token.trim().to_string(),
        audit: format!("signed approval of release {}", s.release),
    })?;
    Ok(s)
}

/// Why the environment is closed for deploys at `now_unix` (outside every window, in a
/// freeze); empty when open.
/// Check every gate; `Err` says which is closed and what to do.
pub fn check_gates(ledger: &Ledger, g: &GateInput) -> Result<Vec<String>, DeployError> {
    let mut notes = Vec::new();
    if !branch_allowed(g.env, g.branch) {
        return Err(DeployError::Gate(format!(
            "error: `{}` deploys only from {}; this is {}\n  hint: deploy from an allowed branch (pass --branch if cairn guessed wrong)",
            g.env_name,
            g.env.branches.join(", "),
            g.branch.map(|b| format!("`{b}`")).unwrap_or_else(|| "no branch".into())
        )));
    }
    if let Some(a) = &g.env.approval {
        match approval_state(ledger, g.env_name, g.env, g.release, g.actor)? {
            Ok(note) => notes.push(note),
            Err(why) => {
                return Err(DeployError::Gate(format!(
                    "error: `{}` needs an approval for release {} from one of {}: {why}\n  hint: cairn approve {} --release {} --by REVIEWER",
                    g.env_name,
                    g.release,
                    a.reviewers.join(", "),
                    g.env_name,
                    g.release
                )));
            }
        }
    }
    let closed = closed_now(g.env, g.now_unix).map_err(|e| DeployError::Usage(format!("error: {e}")))?;
    if !closed.is_empty() {
        match g.break_glass {
            Some(reason) if !reason.trim().is_empty() => {
                notes.push(format!("break-glass: {} ({})", closed.join(", "), reason));
            }
            _ => {
                return Err(DeployError::Gate(format!(
                    "error: `{}` is closed for deploys: {}\n  hint: wait for the window, or override with --break-glass \"REASON\" (recorded)",
                    g.env_name,
                    closed.join(", ")
                )))
            }
        }
    }
    Ok(notes)
}
