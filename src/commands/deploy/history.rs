//! `cairn deploy history ENV`: every run, its halts and resumes, in the machine's time zone.

use super::*;

pub(super) fn history(
    env: &str,
    pipeline: &std::path::Path,
    store: &crate::cli::StoreArg,
    ledger: &RemoteEndpoint,
    json: bool,
) -> Result<(), Error> {
    use crate::report::rfc3339_local;
    let p = load_pipeline(pipeline)?;
    let root = project_root(pipeline);
    let (store, _) = open_store(store, &root)?;
    let ledger = open_ledger(ledger, &p, &Arc::new(store))?;
    let rows: Vec<RunRow> = ledger.call(Op::History { env: env.to_string() }).map_err(store_err)?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("rows serialise");
                v["started"] = rfc3339_local(r.started_at).into();
                for (e, ev) in v["events"].as_array_mut().into_iter().flatten().zip(&r.events) {
                    e["time"] = rfc3339_local(ev.at).into();
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no deploys of {env} yet");
    }
    for r in rows {
        println!(
            "{}  {:<10} release {}  by {:<12} {}{}{}",
            r.id,
            r.result,
            r.release,
            r.who,
            rfc3339_local(r.started_at),
            if r.halt_reason.is_empty() { String::new() } else { format!("  halt: {}", r.halt_reason) },
            if r.break_glass.is_empty() { String::new() } else { format!("  [{}]", r.break_glass) }
        );
        // A run halted and then resumed keeps its halt on record.
        if r.events.iter().any(|e| e.event == "halted") {
            for e in &r.events {
                let detail = if e.detail.is_empty() { String::new() } else { format!(": {}", e.detail) };
                println!("    {}  {}{detail}", rfc3339_local(e.at), e.event);
            }
        }
    }
    Ok(())
}
