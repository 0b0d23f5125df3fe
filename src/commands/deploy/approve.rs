//! `cairn approve ENV`: an approval of the current (or a given) release, optionally signed.

use super::*;

pub fn approve(a: &crate::cli::ApproveArgs) -> Result<(), Error> {
    let pr = prepare(&a.target.pipeline.pipeline, &a.target.store, &a.target.ledger, &a.env, &None)?;
    let env = pr.p.environments.get(&a.env).expect("checked");
    let Some(gate) = &env.approval else {
        return Err(Error::Usage(format!("error: `{}` needs no approval", a.env)));
    };
    let release = a.release.clone().unwrap_or_else(|| pr.release.clone());
    if !gate.reviewers.contains(&a.by) {
        return Err(Error::GateClosed(format!(
            "error: {} is not a reviewer of `{}` ({})",
            a.by,
            a.env,
            gate.reviewers.join(", ")
        )));
    }
    let ttl = match &a.expires {
        Some(s) => crate::model::Dur::parse(s).map_err(|e| Error::Usage(format!("error: --expires: {e}")))?.0,
        None => gate.expires.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(24 * 3600)),
    };
    let now = deploy::now_ms();
    let comment = a.comment.clone().unwrap_or_default();
    if let Some(keyfile) = &a.sign {
        let text = std::fs::read_to_string(keyfile)
            .map_err(|e| Error::Usage(format!("error: cannot read the signing key {}: {e}", keyfile.display())))?;
        let secret = crate::keys::Secret::parse(&text)
            .map_err(|e| Error::Usage(format!("error: {}: {e}", keyfile.display())))?;
        if secret.name != a.by {
            return Err(Error::Usage(format!(
                "error: the key {} belongs to `{}`, not to {}\n  hint: sign with your own key, or pass --by {}",
                keyfile.display(),
                secret.name,
                a.by,
                secret.name
            )));
        }
        let approval = deploy::SignedApproval {
            env: a.env.clone(),
            release: release.clone(),
            approver: a.by.clone(),
            comment,
            expires_at: now + ttl.as_millis() as i64,
        };
        let token = approval.sign(&secret);
        println!("{token}");
        eprintln!(
            "signed approval of release {release} of {} by {} (valid {}); in CI: cairn deploy {} --approval TOKEN (or CAIRN_APPROVAL)",
            a.env,
            a.by,
            crate::model::Dur(ttl),
            a.env
        );
        return Ok(());
    }
    if !gate.keys.is_empty() {
        return Err(Error::GateClosed(format!(
            "error: `{}` takes only signed approvals\n  hint: cairn approve {} --by {} --sign KEYFILE (a key from `cairn keys generate {}`, whose public half is in approval.keys)",
            a.env, a.env, a.by, a.by
        )));
    }
    pr.ledger
        .exec(Op::Approve {
            env: a.env.clone(),
            release: release.clone(),
            approver: a.by.clone(),
            comment,
            expires_at: now + ttl.as_millis() as i64,
            token: String::new(),
            audit: format!("release {release}"),
        })
        .map_err(store_err)?;
    println!("approved release {release} of {} by {} (valid {})", a.env, a.by, crate::model::Dur(ttl));
    // Tell the deploy's channels; a reviewer's machine may lack the secrets they need.
    let console = Console::new(false);
    match runner(&pr, &a.env, &console, "approval") {
        Ok(r) => deploy::notify(&r, "approved", &format!("{}: release {release} approved by {}", a.env, a.by)),
        Err(e) => eprintln!("note: the `approved` event was not sent ({e})"),
    }
    Ok(())
}
