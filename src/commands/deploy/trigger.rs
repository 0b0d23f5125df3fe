//! `cairn run --event ...`: what the workflow does for a trigger: build its steps, then deploy.

use super::*;

/// `cairn run`: what the workflow does for a trigger: build its steps, then deploy.
pub fn run_trigger(a: &crate::cli::RunArgs) -> Result<(), Error> {
    let p = load_pipeline(&a.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let req =
        crate::plan::TriggerRequest { event: a.event.into(), branch: a.gates.branch.clone(), inputs: BTreeMap::new() };
    let plan = crate::plan::plan_trigger(&p, &g, &req)?;
    if plan.trigger.is_none() {
        println!("no trigger matches {}: nothing to do", a.event_name());
        return Ok(());
    }
    let steps: Vec<String> = plan.steps.iter().map(|&i| g.nodes[i].name.clone()).collect();
    let build = crate::cli::BuildArgs {
        pipeline: a.pipeline.clone(),
        store: a.store.clone(),
        steps,
        jobs: None,
        keep_going: false,
        force: vec![],
        quiet: false,
        summary: crate::cli::SummaryFormat::Table,
        summary_file: None,
        remote: a.remote.clone(),
        no_wait: false,
        rebuild_sample: None,
        share_unreproducible: false,
        sandbox: None,
        require_sandbox: false,
    };
    crate::commands::build::run(&build)?;
    let console = Console::new(false);
    for e in &plan.environments {
        let d = DeployArgs {
            env: e.name.clone(),
            pipeline: a.pipeline.clone(),
            store: a.store.clone(),
            branch: a.gates.branch.clone(),
            break_glass: a.gates.break_glass.clone(),
            approval: a.gates.approval.clone(),
            ledger: a.remote.endpoint.clone(),
        };
        start(&d, &console)?;
    }
    Ok(())
}
