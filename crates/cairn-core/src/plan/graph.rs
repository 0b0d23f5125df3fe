//! The step graph: matrix steps expanded, commands rendered, nodes in a stable topological
//! order (declaration order breaks ties), so that plans and drawings are deterministic.

use crate::model::{render, Pipeline, Step};
use std::collections::BTreeMap;

/// One runnable step after matrix expansion.
#[derive(Debug, Clone)]
pub struct Node {
    /// `test` or, for a matrix step, `test[elixir=1.18,otp=27]`.
    pub name: String,
    /// The step's name as declared.
    pub base: String,
    /// Matrix values of this expansion, in axis order.
    pub matrix: Vec<(String, String)>,
    /// The command with placeholders filled.
    pub run: String,
    /// Declared environment with placeholders filled, plus `MATRIX_<AXIS>` values; sorted.
    pub env: BTreeMap<String, String>,
    /// Indices of the nodes this one needs (all expansions of a needed matrix step).
    pub needs: Vec<usize>,
    /// The declaration.
    pub step: Step,
    /// The outputs cairn stores, checks and restores for this node: the declared ones, then
    /// `!path` for each output of another step nested inside them (`mix test` declaring
    /// `_build/test/lib/app/.mix/.mix_test_failures` inside compile's `_build/test/`). Those
    /// belong to the other step: this one neither archives nor fingerprints them.
    pub outputs: Vec<String>,
}

fn normalized(o: &str) -> String {
    o.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// `!path` for every output of another node nested strictly inside one of node `i`'s.
fn carve_outs(nodes: &[Node], i: usize) -> Vec<String> {
    let mine: Vec<String> = nodes[i].step.outputs.iter().map(|o| normalized(o)).collect();
    let mut out: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|&(j, n)| j != i && n.base != nodes[i].base)
        .flat_map(|(_, n)| n.step.outputs.iter().map(|o| normalized(o)))
        .filter(|o| {
            mine.iter().any(|m| o.len() > m.len() + 1 && o.starts_with(m.as_str()) && o.as_bytes()[m.len()] == b'/')
        })
        .map(|o| format!("!{o}"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The expanded graph; `nodes` is in topological order.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("step `{step}` needs unknown step `{need}`")]
    UnknownNeed { step: String, need: String },
    #[error("dependency cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("placeholder `{{{placeholder}}}` in step `{step}` is not defined")]
    Placeholder { step: String, placeholder: String },
    #[error("unknown step `{0}`")]
    UnknownStep(String),
}

fn expansions(step: &Step) -> Vec<Vec<(String, String)>> {
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (axis, values) in step.matrix.iter() {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((axis.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

impl Graph {
    pub fn build(p: &Pipeline) -> Result<Graph, GraphError> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut by_base: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (base, step) in p.steps.iter() {
            for combo in expansions(step) {
                let name = if combo.is_empty() {
                    base.clone()
                } else {
                    let parts: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{base}[{}]", parts.join(","))
                };
                let lookup = |ph: &str| -> Option<String> {
                    if let Some(axis) = ph.strip_prefix("matrix.") {
                        return combo.iter().find(|(k, _)| k == axis).map(|(_, v)| v.clone());
                    }
                    p.vars.get(ph).cloned().or_else(|| (ph == "app").then(|| p.name.clone()))
                };
                let fill = |t: &str| {
                    render(t, lookup).map_err(|ph| GraphError::Placeholder { step: name.clone(), placeholder: ph })
                };
                let run = fill(&step.run)?;
                let mut this = step.clone();
                this.scratch = step.scratch.iter().map(|s| fill(s)).collect::<Result<_, _>>()?;
                let mut env = BTreeMap::new();
                for (k, v) in step.env.iter() {
                    env.insert(k.clone(), fill(v)?);
                }
                for (k, v) in &combo {
                    env.insert(format!("MATRIX_{}", k.to_ascii_uppercase().replace('-', "_")), v.clone());
                }
                by_base.entry(base.as_str()).or_default().push(nodes.len());
                nodes.push(Node {
                    name,
                    base: base.clone(),
                    matrix: combo,
                    run,
                    env,
                    needs: Vec::new(),
                    step: this,
                    outputs: step.outputs.clone(),
                });
            }
        }
        for i in 0..nodes.len() {
            let carve = carve_outs(&nodes, i);
            nodes[i].outputs.extend(carve);
        }
        for node in &mut nodes {
            let mut needs = Vec::new();
            for need in &node.step.needs {
                let targets = by_base
                    .get(need.as_str())
                    .ok_or_else(|| GraphError::UnknownNeed { step: node.base.clone(), need: need.clone() })?;
                needs.extend(targets.iter().copied());
            }
            needs.sort_unstable();
            needs.dedup();
            node.needs = needs;
        }
        topo_sort(nodes)
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Nodes named by `targets` (a declared name selects all its matrix expansions) and all
    /// they need, in topological order.
    pub fn closure<S: AsRef<str>>(&self, targets: &[S]) -> Result<Vec<usize>, GraphError> {
        let mut want = vec![false; self.nodes.len()];
        let mut stack = Vec::new();
        for t in targets {
            let t = t.as_ref();
            let hits: Vec<usize> =
                (0..self.nodes.len()).filter(|&i| self.nodes[i].name == t || self.nodes[i].base == t).collect();
            if hits.is_empty() {
                return Err(GraphError::UnknownStep(t.to_string()));
            }
            stack.extend(hits);
        }
        while let Some(i) = stack.pop() {
            if !want[i] {
                want[i] = true;
                stack.extend(self.nodes[i].needs.iter().copied());
            }
        }
        Ok((0..self.nodes.len()).filter(|&i| want[i]).collect())
    }

    /// Nodes that node `i` (transitively) needs, in index order, which is topological.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = self.nodes[i].needs.clone();
        while let Some(d) = stack.pop() {
            if !seen[d] {
                seen[d] = true;
                stack.extend(self.nodes[d].needs.iter().copied());
            }
        }
        (0..self.nodes.len()).filter(|&j| seen[j]).collect()
    }

    /// Nodes that (transitively) need node `i`.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        let mut out = vec![false; self.nodes.len()];
        let mut changed = true;
        out[i] = true;
        while changed {
            changed = false;
            for (j, n) in self.nodes.iter().enumerate() {
                if !out[j] && n.needs.iter().any(|&d| out[d]) {
                    out[j] = true;
                    changed = true;
                }
            }
        }
        (0..self.nodes.len()).filter(|&j| j != i && out[j]).collect()
    }
}

/// Kahn's algorithm; among ready nodes the earliest declared goes first.
fn topo_sort(nodes: Vec<Node>) -> Result<Graph, GraphError> {
    let n = nodes.len();
    let mut indegree: Vec<usize> = nodes.iter().map(|x| x.needs.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for (j, node) in nodes.iter().enumerate() {
            if node.needs.contains(&i) {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.insert(j);
                }
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<String> = (0..n).filter(|i| !order.contains(i)).map(|i| nodes[i].name.clone()).collect();
        return Err(GraphError::Cycle(stuck));
    }
    let mut new_index = vec![0; n];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let mut sorted = Vec::with_capacity(n);
    for &old in &order {
        let mut node = slots[old].take().expect("each node is placed once");
        node.needs = node.needs.iter().map(|&d| new_index[d]).collect();
        node.needs.sort_unstable();
        sorted.push(node);
    }
    Ok(Graph { nodes: sorted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_and_dependents_are_transitive_and_in_topological_order() {
        let p = crate::model::load(
            "t.ron",
            br#"Pipeline(name: "t", steps: {
                "deps": (run: "fetch"),
                "lint": (run: "lint"),
                "compile": (run: "build", needs: ["deps"]),
                "test": (run: "test", needs: ["compile", "lint"]),
            })"#,
        )
        .unwrap();
        let g = Graph::build(&p).unwrap();
        let names = |v: Vec<usize>| v.into_iter().map(|i| g.nodes[i].name.clone()).collect::<Vec<_>>();
        let ix = |n: &str| g.index(n).unwrap();
        let up = g.ancestors(ix("test"));
        assert!(up.windows(2).all(|w| w[0] < w[1]), "index (topological) order: {up:?}");
        let mut got = names(up);
        got.sort();
        assert_eq!(got, ["compile", "deps", "lint"]);
        assert!(g.ancestors(ix("deps")).is_empty());
        let mut down = names(g.dependents(ix("deps")));
        down.sort();
        assert_eq!(down, ["compile", "test"]);
    }
}
