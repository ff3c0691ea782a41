//! Constant sub-graphs that compute a weight (dequantization, casts, transposes), folded on demand.
//!
//! Quantized exports store `int8` initializers followed by `Cast` + `Mul` (or `DequantizeLinear`);
//! the weight the model uses is the result of that sub-graph. An [`Expr`] records it so that a
//! weight is computed only when the converter asks for it.

use super::proto::{GraphProto, TensorProto};
use super::tensor::{decode_f32, dims, Ctx};
use crate::ingest::IngestError;

/// Where a constant tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// `graph.initializer[i]`.
    Init(usize),
    /// The `value` attribute of `graph.node[i]` (a `Constant` node).
    Node(usize),
}

/// A constant expression over initializers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A stored tensor.
    Leaf(Leaf),
    /// Element-wise product with numpy broadcasting.
    Mul(Box<Expr>, Box<Expr>),
    /// Element-wise difference with numpy broadcasting.
    Sub(Box<Expr>, Box<Expr>),
    /// Permutation of the axes.
    Transpose(Box<Expr>, Vec<usize>),
    /// `(x - zero_point) * scale`, per tensor or along `axis`.
    Dequant {
        x: Box<Expr>,
        scale: Box<Expr>,
        zero: Option<Box<Expr>>,
        axis: usize,
    },
}

/// A dense f32 array.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub(crate) fn leaf_tensor(graph: &GraphProto, leaf: Leaf) -> Option<&TensorProto> {
    match leaf {
        Leaf::Init(i) => graph.initializer.get(i),
        Leaf::Node(i) => graph
            .node
            .get(i)?
            .attribute
            .iter()
            .find(|a| a.name == "value")?
            .t
            .as_ref(),
    }
}

fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Strides of `shape` laid into an `n`-dim broadcast result (0 on broadcast axes).
fn strides_in(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = vec![0; n];
    let mut acc = 1;
    for (k, &d) in shape.iter().enumerate().rev() {
        let i = n - shape.len() + k;
        s[i] = if d == 1 { 0 } else { acc };
        acc *= d;
    }
    s
}

fn binary(a: Array, b: Array, f: impl Fn(f32, f32) -> f32) -> Option<Array> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let n = shape.len();
    let (sa, sb) = (strides_in(&a.shape, n), strides_in(&b.shape, n));
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut idx = vec![0usize; n];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..total {
        data.push(f(*a.data.get(ia)?, *b.data.get(ib)?));
        // Odometer increment over the output index, keeping both input offsets in step.
        for k in (0..n).rev() {
            idx[k] += 1;
            ia += sa[k];
            ib += sb[k];
            if idx[k] < shape[k] {
                break;
            }
            ia -= sa[k] * shape[k];
            ib -= sb[k] * shape[k];
            idx[k] = 0;
        }
    }
    Some(Array { shape, data })
}

/// Permutes the axes of `a`.
pub(crate) fn transpose(a: &Array, perm: &[usize]) -> Option<Array> {
    let n = a.shape.len();
    if perm.len() != n {
        return None;
    }
    let shape: Vec<usize> = perm
        .iter()
        .map(|&p| a.shape.get(p).copied())
        .collect::<Option<_>>()?;
    let src = strides_in(&a.shape, n);
    // Strides of the source in output-axis order; a broadcast stride of 0 only occurs on size 1.
    let s: Vec<usize> = perm.iter().map(|&p| src[p]).collect();
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut idx = vec![0usize; n];
    let mut off = 0usize;
    for _ in 0..total {
        data.push(*a.data.get(off)?);
        for k in (0..n).rev() {
            idx[k] += 1;
            off += s[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= s[k] * shape[k];
            idx[k] = 0;
        }
    }
    Some(Array { shape, data })
}

impl Expr {
    /// The shape of the result, without computing it.
    pub fn shape(&self, ctx: &Ctx, graph: &GraphProto) -> Result<Vec<usize>, IngestError> {
        let bad = |reason: String| IngestError::BadTensor {
            path: ctx.path.clone(),
            tensor: self.describe(graph),
            reason,
        };
        match self {
            Expr::Leaf(l) => {
                let t =
                    leaf_tensor(graph, *l).ok_or_else(|| bad("constant without a value".into()))?;
                dims(ctx, t)
            }
            Expr::Mul(a, b) | Expr::Sub(a, b) => {
                let (sa, sb) = (a.shape(ctx, graph)?, b.shape(ctx, graph)?);
                broadcast(&sa, &sb)
                    .ok_or_else(|| bad(format!("shapes {sa:?} and {sb:?} do not broadcast")))
            }
            Expr::Transpose(a, perm) => {
                let s = a.shape(ctx, graph)?;
                let out: Option<Vec<usize>> = perm.iter().map(|&p| s.get(p).copied()).collect();
                match out {
                    Some(o) if o.len() == s.len() => Ok(o),
                    _ => Err(bad(format!("perm {perm:?} does not fit shape {s:?}"))),
                }
            }
            Expr::Dequant { x, .. } => x.shape(ctx, graph),
        }
    }

    /// Computes the value.
    pub fn eval(&self, ctx: &Ctx, graph: &GraphProto) -> Result<Array, IngestError> {
        let bad = |reason: String| IngestError::BadTensor {
            path: ctx.path.clone(),
            tensor: self.describe(graph),
            reason,
        };
        match self {
            Expr::Leaf(l) => {
                let t =
                    leaf_tensor(graph, *l).ok_or_else(|| bad("constant without a value".into()))?;
                Ok(Array {
                    shape: dims(ctx, t)?,
                    data: decode_f32(ctx, t)?,
                })
            }
            Expr::Mul(a, b) => binary(a.eval(ctx, graph)?, b.eval(ctx, graph)?, |x, y| x * y)
                .ok_or_else(|| bad("operands do not broadcast".into())),
            Expr::Sub(a, b) => binary(a.eval(ctx, graph)?, b.eval(ctx, graph)?, |x, y| x - y)
                .ok_or_else(|| bad("operands do not broadcast".into())),
            Expr::Transpose(a, perm) => transpose(&a.eval(ctx, graph)?, perm)
                .ok_or_else(|| bad(format!("perm {perm:?} does not fit"))),
            Expr::Dequant {
                x,
                scale,
                zero,
                axis,
            } => {
                let xv = x.eval(ctx, graph)?;
                let rank = xv.shape.len();
                let shaped = |e: &Expr| -> Result<Array, IngestError> {
                    let mut v = e.eval(ctx, graph)?;
                    if v.data.len() > 1 {
                        // Per-axis parameters: place them on `axis` for broadcasting.
                        let mut s = vec![1; rank];
                        let slot = s
                            .get_mut(*axis)
                            .ok_or_else(|| bad(format!("axis {axis} out of range")))?;
                        *slot = v.data.len();
                        v.shape = s;
                    }
                    Ok(v)
                };
                let sv = shaped(scale)?;
                let centred = match zero {
                    Some(z) => binary(xv, shaped(z)?, |a, b| a - b)
                        .ok_or_else(|| bad("zero point does not broadcast".into()))?,
                    None => xv,
                };
                binary(centred, sv, |a, b| a * b)
                    .ok_or_else(|| bad("scale does not broadcast".into()))
            }
        }
    }

    /// The name of the stored tensor(s) behind this expression, for messages.
    pub fn describe(&self, graph: &GraphProto) -> String {
        match self {
            Expr::Leaf(l) => match leaf_tensor(graph, *l) {
                Some(t) if !t.name.is_empty() => t.name.clone(),
                _ => match l {
                    Leaf::Node(i) => graph
                        .node
                        .get(*i)
                        .map(|n| format!("constant node {}", n.name))
                        .unwrap_or_default(),
                    Leaf::Init(i) => format!("initializer #{i}"),
                },
            },
            Expr::Mul(a, _) | Expr::Sub(a, _) => a.describe(graph),
            Expr::Transpose(a, _) => a.describe(graph),
            Expr::Dequant { x, .. } => x.describe(graph),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_mul_and_transpose_match_naive_loops() {
        let a = Array {
            shape: vec![3, 4],
            data: (0..12).map(|x| x as f32).collect(),
        };
        let row = Array {
            shape: vec![1, 4],
            data: vec![1.0, 2.0, 3.0, 4.0],
        };
        let col = Array {
            shape: vec![3, 1],
            data: vec![10.0, 20.0, 30.0],
        };
        let r = binary(a.clone(), row.clone(), |x, y| x * y).unwrap();
        let c = binary(a.clone(), col.clone(), |x, y| x * y).unwrap();
        for i in 0..3 {
            for j in 0..4 {
                assert_eq!(r.data[i * 4 + j], a.data[i * 4 + j] * row.data[j]);
                assert_eq!(c.data[i * 4 + j], a.data[i * 4 + j] * col.data[i]);
            }
        }
        let t = transpose(&a, &[1, 0]).unwrap();
        assert_eq!(t.shape, vec![4, 3]);
        for i in 0..3 {
            for j in 0..4 {
                assert_eq!(t.data[j * 3 + i], a.data[i * 4 + j]);
            }
        }
        assert!(binary(
            a,
            Array {
                shape: vec![2],
                data: vec![1.0, 2.0]
            },
            |x, y| x * y
        )
        .is_none());
    }

    #[test]
    fn dequantize_per_channel_matches_formula() {
        use crate::ingest::onnx::proto::{data_type, TensorProto};
        let q: Vec<i8> = vec![-128, -1, 0, 5, 127, 64];
        let scale = [0.5f32, 0.25, 2.0];
        let zero: Vec<i8> = vec![0, -1, 3];
        let t = |name: &str, dims: Vec<i64>, dt: i32, raw: Vec<u8>| TensorProto {
            name: name.into(),
            dims,
            data_type: dt,
            raw_data: raw.into(),
            ..Default::default()
        };
        let graph = GraphProto {
            initializer: vec![
                t(
                    "q",
                    vec![2, 3],
                    data_type::INT8,
                    q.iter().map(|&x| x as u8).collect(),
                ),
                t(
                    "s",
                    vec![3],
                    data_type::FLOAT,
                    scale.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                t(
                    "z",
                    vec![3],
                    data_type::INT8,
                    zero.iter().map(|&x| x as u8).collect(),
                ),
            ],
            ..Default::default()
        };
        let ctx = Ctx {
            path: "test.onnx".into(),
            dir: ".".into(),
        };
        let leaf = |i| Box::new(Expr::Leaf(Leaf::Init(i)));
        let e = Expr::Dequant {
            x: leaf(0),
            scale: leaf(1),
            zero: Some(leaf(2)),
            axis: 1,
        };
        let got = e.eval(&ctx, &graph).unwrap();
        assert_eq!(got.shape, vec![2, 3]);
        for (k, v) in got.data.iter().enumerate() {
            let c = k % 3;
            assert_eq!(*v, (q[k] as f32 - zero[c] as f32) * scale[c]);
        }
    }
}
