//! Drawing the step graph: Mermaid (like the seed's flowchart), Graphviz DOT, and plain text.
//! Environments appear as deploy nodes after the steps they require.

use super::graph::Graph;
use crate::model::Pipeline;
use std::fmt::Write;

/// Steps each environment waits for ([`super::trigger::required_steps`]).
fn env_edges(p: &Pipeline) -> Vec<(String, Vec<String>)> {
    p.environments.iter().map(|(name, _)| (name.clone(), super::trigger::required_steps(p, name, None))).collect()
}

fn quote(s: &str) -> String {
    s.replace('"', "'")
}

pub fn mermaid(p: &Pipeline, g: &Graph) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, n) in g.nodes.iter().enumerate() {
        let _ = writeln!(out, "  s{i}[\"{}\"]", quote(&n.name));
    }
    for (i, n) in g.nodes.iter().enumerate() {
        for d in &n.needs {
            let _ = writeln!(out, "  s{d} --> s{i}");
        }
    }
    for (j, (name, req)) in env_edges(p).iter().enumerate() {
        let env = p.environments.get(name).expect("edges come from environments");
        let regions = if env.regions.is_empty() { String::new() } else { format!(" ({})", env.regions.join(" → ")) };
        let _ = writeln!(out, "  e{j}{{{{\"deploy {}{}\"}}}}", quote(name), quote(&regions));
        for r in req {
            for (i, n) in g.nodes.iter().enumerate() {
                if n.base == *r {
                    let _ = writeln!(out, "  s{i} --> e{j}");
                }
            }
        }
    }
    out
}

pub fn dot(p: &Pipeline, g: &Graph) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n", quote(&p.name));
    for (i, n) in g.nodes.iter().enumerate() {
        let _ = writeln!(out, "  s{i} [label=\"{}\"];", quote(&n.name));
    }
    for (i, n) in g.nodes.iter().enumerate() {
        for d in &n.needs {
            let _ = writeln!(out, "  s{d} -> s{i};");
        }
    }
    for (j, (name, req)) in env_edges(p).iter().enumerate() {
        let _ = writeln!(out, "  e{j} [label=\"deploy {}\", shape=hexagon];", quote(name));
        for r in req {
            for (i, n) in g.nodes.iter().enumerate() {
                if n.base == *r {
                    let _ = writeln!(out, "  s{i} -> e{j};");
                }
            }
        }
    }
    out.push_str("}\n");
    out
}

pub fn text(p: &Pipeline, g: &Graph) -> String {
    let mut out = String::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let needs: Vec<&str> = n.needs.iter().map(|&d| g.nodes[d].name.as_str()).collect();
        let _ = write!(out, "{:>3}. {}", i + 1, n.name);
        if !needs.is_empty() {
            let _ = write!(out, "  ← {}", needs.join(", "));
        }
        out.push('\n');
    }
    for (name, req) in env_edges(p) {
        let env = p.environments.get(&name).expect("edges come from environments");
        let _ = write!(out, "  deploy {name}");
        if !env.regions.is_empty() {
            let _ = write!(out, " [{}]", env.regions.join(" → "));
        }
        if !req.is_empty() {
            let _ = write!(out, "  ← {}", req.join(", "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's graph, drawn: a change to matrix expansion, ordering, required steps or the
    /// drawing itself shows up as a snapshot diff (`cargo insta review`).
    #[test]
    fn the_seed_graph_drawn() {
        let p = crate::model::load("automata-signal.ron", include_bytes!("../../../../pipelines/automata-signal.ron"))
            .unwrap();
        let g = Graph::build(&p).unwrap();
        insta::assert_snapshot!("seed_mermaid", mermaid(&p, &g));
        insta::assert_snapshot!("seed_text", text(&p, &g));
    }
}
