//! An indexed ONNX graph: producers, consumers, constants, and the linear and LayerNorm nodes.

use std::collections::{HashMap, HashSet, VecDeque};

use super::expr::{Array, Expr, Leaf};
use super::proto::{AttributeProto, GraphProto, NodeProto};
use super::tensor::Ctx;
use crate::ingest::IngestError;

/// Operators a BERT export may contain. Everything else is reported before any analysis.
pub(crate) const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "And",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "DequantizeLinear",
    "Div",
    "Equal",
    "Erf",
    "Expand",
    "Flatten",
    "Gather",
    "GatherND",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "IsNaN",
    "LayerNormalization",
    "Less",
    "LessOrEqual",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Pow",
    "Range",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Ops that only move or re-view data: a tensor seen through them is "the same" hidden state.
const VIEW_OPS: &[&str] = &[
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Transpose",
    "Cast",
];

/// A linear layer: `MatMul` (+ bias `Add`) or `Gemm` with a constant weight.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub node: usize,
    pub input: String,
    pub output: String,
    pub weight: Expr,
    /// The weight is stored `[in, out]` (MatMul, Gemm without transB).
    pub in_out: bool,
    pub bias: Option<Expr>,
    pub in_features: usize,
    pub out_features: usize,
}

/// A LayerNorm, fused or decomposed.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub node: usize,
    pub input: String,
    pub output: String,
    pub gamma: Expr,
    pub beta: Option<Expr>,
    pub eps: f64,
}

/// The graph with lookups by tensor name.
pub(crate) struct Graph<'a> {
    pub g: &'a GraphProto,
    pub ctx: &'a Ctx,
    pub order: Vec<usize>,
    pub producer: HashMap<&'a str, usize>,
    pub consumers: HashMap<&'a str, Vec<usize>>,
    pub inits: HashMap<&'a str, usize>,
    pub inputs: Vec<&'a str>,
}

/// The f64 with the shortest decimal form of an f32 (`1e-12f32` gives `1e-12`, not `9.99...e-13`).
fn f32_to_f64_shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

pub(crate) fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// Lists every node whose operator is not supported, grouped by operator, in one error.
pub(crate) fn check_ops(ctx: &Ctx, g: &GraphProto) -> Result<(), IngestError> {
    let mut bad: Vec<(String, Vec<String>)> = Vec::new();
    for n in &g.node {
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        if default_domain && SUPPORTED_OPS.contains(&n.op_type.as_str()) {
            continue;
        }
        let key = if default_domain {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        match bad.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(n.name.clone()),
            None => bad.push((key, vec![n.name.clone()])),
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let ops = bad
        .into_iter()
        .map(|(op, nodes)| {
            let shown: Vec<&str> = nodes.iter().take(5).map(String::as_str).collect();
            let more = if nodes.len() > 5 { ", ..." } else { "" };
            format!("{op} x {} (nodes: {}{more})", nodes.len(), shown.join(", "))
        })
        .collect();
    Err(IngestError::UnsupportedOps {
        path: ctx.path.clone(),
        ops,
    })
}

impl<'a> Graph<'a> {
    /// Indexes `g`; nodes are visited in a topological order (exporters usually emit one).
    pub fn new(g: &'a GraphProto, ctx: &'a Ctx) -> Result<Self, IngestError> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                if !o.is_empty() {
                    producer.insert(o.as_str(), i);
                }
            }
            for inp in &n.input {
                if !inp.is_empty() {
                    consumers.entry(inp.as_str()).or_default().push(i);
                }
            }
        }
        let inits: HashMap<&str, usize> = g
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let inputs = g
            .input
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !inits.contains_key(n))
            .collect();
        // Kahn's algorithm over node dependencies.
        let mut indeg = vec![0usize; g.node.len()];
        for (i, n) in g.node.iter().enumerate() {
            let deps: HashSet<usize> = n
                .input
                .iter()
                .filter_map(|x| producer.get(x.as_str()).copied())
                .collect();
            indeg[i] = deps.len();
        }
        let mut queue: VecDeque<usize> = (0..g.node.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(g.node.len());
        while let Some(i) = queue.pop_front() {
            order.push(i);
            // Each dependent node counts this producer once, however many outputs it reads.
            let mut dependents: Vec<usize> = g.node[i]
                .output
                .iter()
                .flat_map(|o| consumers.get(o.as_str()).map(Vec::as_slice).unwrap_or(&[]))
                .copied()
                .collect();
            dependents.sort_unstable();
            dependents.dedup();
            for c in dependents {
                if indeg[c] > 0 {
                    indeg[c] -= 1;
                    if indeg[c] == 0 {
                        queue.push_back(c);
                    }
                }
            }
        }
        if order.len() != g.node.len() {
            return Err(IngestError::NotBert {
                path: ctx.path.clone(),
                at: "graph".into(),
                reason: "the graph has a cycle".into(),
            });
        }
        Ok(Graph {
            g,
            ctx,
            order,
            producer,
            consumers,
            inits,
            inputs,
        })
    }

    pub fn node(&self, i: usize) -> &'a NodeProto {
        &self.g.node[i]
    }

    pub fn producer_of(&self, t: &str) -> Option<&'a NodeProto> {
        self.producer.get(t).map(|&i| &self.g.node[i])
    }

    pub fn consumers_of(&self, t: &str) -> &[usize] {
        self.consumers.get(t).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The expression computing `t` when it depends on constants only (weights, dequantization).
    pub fn const_expr(&self, t: &str) -> Option<Expr> {
        self.const_expr_depth(t, 0)
    }

    fn const_expr_depth(&self, t: &str, depth: usize) -> Option<Expr> {
        if depth > 8 {
            return None;
        }
        if let Some(&i) = self.inits.get(t) {
            return Some(Expr::Leaf(Leaf::Init(i)));
        }
        let &ni = self.producer.get(t)?;
        let n = &self.g.node[ni];
        let arg = |k: usize| {
            n.input
                .get(k)
                .and_then(|x| self.const_expr_depth(x, depth + 1))
        };
        match n.op_type.as_str() {
            "Constant" => attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .map(|_| Expr::Leaf(Leaf::Node(ni))),
            "Cast" | "Identity" => arg(0),
            "Mul" => Some(Expr::Mul(Box::new(arg(0)?), Box::new(arg(1)?))),
            "Sub" => Some(Expr::Sub(Box::new(arg(0)?), Box::new(arg(1)?))),
            "Transpose" => {
                let x = arg(0)?;
                let perm: Vec<usize> = match attr(n, "perm") {
                    Some(a) => a
                        .ints
                        .iter()
                        .map(|&p| usize::try_from(p).ok())
                        .collect::<Option<_>>()?,
                    None => (0..x.shape(self.ctx, self.g).ok()?.len()).rev().collect(),
                };
                Some(Expr::Transpose(Box::new(x), perm))
            }
            "DequantizeLinear" => {
                let x = arg(0)?;
                let rank = x.shape(self.ctx, self.g).ok()?.len() as i64;
                let axis = attr(n, "axis").map(|a| a.i).unwrap_or(1);
                let axis = if axis < 0 { axis + rank } else { axis };
                Some(Expr::Dequant {
                    x: Box::new(x),
                    scale: Box::new(arg(1)?),
                    zero: if n.input.get(2).is_some_and(|z| !z.is_empty()) {
                        Some(Box::new(arg(2)?))
                    } else {
                        None
                    },
                    axis: usize::try_from(axis).ok()?,
                })
            }
            _ => None,
        }
    }

    /// Evaluates a small constant (shape vectors, scalars); `None` if `t` is not constant.
    pub fn const_value(&self, t: &str) -> Option<Array> {
        let e = self.const_expr(t)?;
        let shape = e.shape(self.ctx, self.g).ok()?;
        if shape.iter().product::<usize>() > 4096 {
            return None;
        }
        e.eval(self.ctx, self.g).ok()
    }

    /// Follows `t` back through re-viewing ops to the tensor that holds the same values.
    pub fn canon(&self, t: &str) -> String {
        let mut cur = t.to_string();
        for _ in 0..16 {
            match self.producer_of(&cur) {
                Some(n)
                    if VIEW_OPS.contains(&n.op_type.as_str())
                        && self.const_expr(&cur).is_none() =>
                {
                    match n.input.first() {
                        Some(x) => cur = x.clone(),
                        None => break,
                    }
                }
                _ => break,
            }
        }
        cur
    }

    /// Every `MatMul`/`Gemm` whose weight is constant, with its bias.
    pub fn linears(&self) -> Result<Vec<Linear>, IngestError> {
        let mut out = Vec::new();
        for &i in &self.order {
            let n = self.node(i);
            let (Some(a), Some(b)) = (n.input.first(), n.input.get(1)) else {
                continue;
            };
            let is_gemm = n.op_type == "Gemm";
            if !(is_gemm || n.op_type == "MatMul") || self.const_expr(a).is_some() {
                continue;
            }
            let Some(weight) = self.const_expr(b) else {
                continue;
            };
            let shape = weight.shape(self.ctx, self.g)?;
            let [r, c] = shape[..] else { continue };
            let bad = |reason: &str| IngestError::BadNode {
                path: self.ctx.path.clone(),
                node: n.name.clone(),
                op: n.op_type.clone(),
                reason: reason.into(),
            };
            let mut in_out = true;
            let mut bias = None;
            let mut output = n.output.first().cloned().unwrap_or_default();
            if is_gemm {
                let geti = |k: &str| attr(n, k).map(|x| x.i).unwrap_or(0);
                let getf = |k: &str| attr(n, k).map(|x| x.f).unwrap_or(1.0);
                if geti("transA") != 0 {
                    return Err(bad("transA = 1 is not supported"));
                }
                if getf("alpha") != 1.0 || getf("beta") != 1.0 {
                    return Err(bad("alpha and beta must be 1"));
                }
                in_out = geti("transB") == 0;
                if let Some(cname) = n.input.get(2).filter(|s| !s.is_empty()) {
                    bias = Some(
                        self.const_expr(cname)
                            .ok_or_else(|| bad("bias input C is not constant"))?,
                    );
                }
            }
            let (inf, outf) = if in_out { (r, c) } else { (c, r) };
            if bias.is_none() {
                // A bias Add right after a MatMul belongs to the linear layer.
                if let [ci] = self.consumers_of(&output) {
                    let add = self.node(*ci);
                    if add.op_type == "Add" {
                        let other = add.input.iter().find(|x| **x != output);
                        if let Some(e) = other.and_then(|o| self.const_expr(o)) {
                            let s = e.shape(self.ctx, self.g)?;
                            if s.iter().product::<usize>() == outf && s.last() == Some(&outf) {
                                bias = Some(e);
                                output = add.output.first().cloned().unwrap_or_default();
                            }
                        }
                    }
                }
            }
            out.push(Linear {
                node: i,
                input: a.clone(),
                output,
                weight,
                in_out,
                bias,
                in_features: inf,
                out_features: outf,
            });
        }
        Ok(out)
    }

    /// Every LayerNorm: `LayerNormalization` nodes and the decomposed
    /// `(x - mean) / sqrt(var + eps) * gamma + beta` pattern.
    pub fn layer_norms(&self) -> Result<Vec<LayerNorm>, IngestError> {
        let mut out = Vec::new();
        for &i in &self.order {
            let n = self.node(i);
            if n.op_type == "LayerNormalization" {
                let bad = |reason: &str| IngestError::BadNode {
                    path: self.ctx.path.clone(),
                    node: n.name.clone(),
                    op: n.op_type.clone(),
                    reason: reason.into(),
                };
                let axis = attr(n, "axis").map(|a| a.i).unwrap_or(-1);
                if axis != -1 && axis != 2 {
                    return Err(bad("only normalization over the last axis is supported"));
                }
                let gamma = n
                    .input
                    .get(1)
                    .and_then(|s| self.const_expr(s))
                    .ok_or_else(|| bad("scale is not constant"))?;
                let beta = match n.input.get(2).filter(|s| !s.is_empty()) {
                    Some(s) => Some(
                        self.const_expr(s)
                            .ok_or_else(|| bad("bias is not constant"))?,
                    ),
                    None => None,
                };
                out.push(LayerNorm {
                    node: i,
                    input: n.input.first().cloned().unwrap_or_default(),
                    output: n.output.first().cloned().unwrap_or_default(),
                    gamma,
                    beta,
                    eps: attr(n, "epsilon")
                        .map(|a| f32_to_f64_shortest(a.f))
                        .unwrap_or(1e-5),
                });
            } else if n.op_type == "Div" {
                if let Some(ln) = self.decomposed_ln(i) {
                    out.push(ln);
                }
            }
        }
        Ok(out)
    }

    /// Matches the decomposed LayerNorm around the `Div` node `i`.
    fn decomposed_ln(&self, i: usize) -> Option<LayerNorm> {
        let div = self.node(i);
        let sub = self.producer_of(div.input.first()?)?;
        if sub.op_type != "Sub" {
            return None;
        }
        let x = sub.input.first()?;
        let mean = self.producer_of(sub.input.get(1)?)?;
        if mean.op_type != "ReduceMean" || mean.input.first()? != x {
            return None;
        }
        let sqrt = self.producer_of(div.input.get(1)?)?;
        let add = self
            .producer_of(sqrt.input.first()?)
            .filter(|_| sqrt.op_type == "Sqrt")?;
        if add.op_type != "Add" {
            return None;
        }
        let (var_in, eps_in) = match (self.producer_of(add.input.first()?), add.input.get(1)) {
            (Some(p), Some(e)) if p.op_type == "ReduceMean" => (p, e),
            _ => (self.producer_of(add.input.get(1)?)?, add.input.first()?),
        };
        let pow = self.producer_of(var_in.input.first()?)?;
        if var_in.op_type != "ReduceMean" || !(pow.op_type == "Pow" || pow.op_type == "Mul") {
            return None;
        }
        let eps = f32_to_f64_shortest(*self.const_value(eps_in)?.data.first()?);
        // Scale then shift, either operand order.
        let [mi] = self.consumers_of(div.output.first()?) else {
            return None;
        };
        let mul = self.node(*mi);
        let gname = mul.input.iter().find(|s| Some(*s) != div.output.first())?;
        let gamma = self.const_expr(gname).filter(|_| mul.op_type == "Mul")?;
        let [ai] = self.consumers_of(mul.output.first()?) else {
            return None;
        };
        let addb = self.node(*ai);
        let bname = addb.input.iter().find(|s| Some(*s) != mul.output.first())?;
        let beta = self.const_expr(bname).filter(|_| addb.op_type == "Add")?;
        Some(LayerNorm {
            node: i,
            input: x.clone(),
            output: addb.output.first()?.clone(),
            gamma,
            beta: Some(beta),
            eps,
        })
    }

    /// Graph inputs that `t` depends on (walking producers back).
    pub fn input_roots(&self, t: &str) -> Vec<&'a str> {
        let mut roots = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![t.to_string()];
        while let Some(cur) = stack.pop() {
            if !seen.insert(cur.clone()) || seen.len() > 256 {
                continue;
            }
            if let Some(name) = self.inputs.iter().find(|n| **n == cur) {
                roots.push(*name);
            } else if let Some(p) = self.producer_of(&cur) {
                stack.extend(p.input.iter().filter(|s| !s.is_empty()).cloned());
            }
        }
        roots
    }
}
