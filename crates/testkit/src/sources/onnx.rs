//! Runnable ONNX graphs of the tiny synthetic BERT, in several export styles.
//!
//! Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64 `[batch, seq]`), output
//! `last_hidden_state` (float `[batch, seq, hidden]`), opset 17. The weights are those of
//! [`super::tiny_weights`].

use std::io;
use std::path::Path;

use prost::Message;

use super::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, DATA_LOCATION_EXTERNAL,
};
use ets::format::names::{self, LayerTensor};
use ets::ingest::SourceTensor;

use super::{tiny_config, tiny_weights};

/// How the synthetic graph is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnnxStyle {
    /// Weights inline as raw data, `MatMul` + bias `Add`, fused `LayerNormalization`, erf GELU;
    /// key weights stored `[out, in]` behind a `Transpose` node.
    Inline,
    /// As `Inline`, with every weight in an external data file beside the model.
    External,
    /// As `Inline`, with each LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add.
    DecomposedLn,
    /// `Gemm` with `transB = 1` (weights `[out, in]`) on 2-D inputs, tanh GELU.
    GemmTanh,
}

impl OnnxStyle {
    /// Every style.
    pub const ALL: [OnnxStyle; 4] = [
        OnnxStyle::Inline,
        OnnxStyle::External,
        OnnxStyle::DecomposedLn,
        OnnxStyle::GemmTanh,
    ];
}

struct B {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    n: usize,
    external: Option<(String, Vec<u8>)>,
}

fn a_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attr_type::INT,
        ..Default::default()
    }
}
fn a_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}
fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

impl B {
    fn fresh(&mut self, hint: &str) -> String {
        self.n += 1;
        format!("{hint}_{}", self.n)
    }
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("node_{out}"),
            op_type: op.into(),
            attribute: attrs,
            domain: String::new(),
        });
        out
    }
    /// A float initializer (anonymous name, like real exports).
    fn weight(&mut self, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh("onnx::W");
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut t = TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.clone(),
            ..Default::default()
        };
        match &mut self.external {
            Some((file, buf)) if !dims.is_empty() && data.len() > 1 => {
                while buf.len() % 64 != 0 {
                    buf.push(0);
                }
                let kv = |k: &str, v: String| StringStringEntryProto {
                    key: k.into(),
                    value: v,
                };
                t.external_data = vec![
                    kv("location", file.clone()),
                    kv("offset", buf.len().to_string()),
                    kv("length", raw.len().to_string()),
                ];
                t.data_location = DATA_LOCATION_EXTERNAL;
                buf.extend_from_slice(&raw);
            }
            _ => t.raw_data = raw.into(),
        }
        self.inits.push(t);
        name
    }
    fn scalar(&mut self, x: f32) -> String {
        self.weight(&[], &[x])
    }
    fn ints(&mut self, v: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.inits.push(TensorProto {
            dims: vec![v.len() as i64],
            data_type: data_type::INT64,
            name: name.clone(),
            int64_data: v.to_vec(),
            ..Default::default()
        });
        name
    }
    fn int_scalar(&mut self, x: i64) -> String {
        let name = self.fresh("const_i64s");
        self.inits.push(TensorProto {
            data_type: data_type::INT64,
            name: name.clone(),
            int64_data: vec![x],
            ..Default::default()
        });
        name
    }
}

fn get<'w>(w: &'w [(String, SourceTensor)], name: &str) -> &'w SourceTensor {
    // The names come from the generator itself; a miss is a bug in this module.
    &w.iter()
        .find(|(n, _)| n == name)
        .expect("synthetic weight present")
        .1
}

fn transposed(t: &SourceTensor) -> Vec<f32> {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    out
}

struct Ctx<'w> {
    style: OnnxStyle,
    w: &'w [(String, SourceTensor)],
    /// `[batch, seq]` as an int64 tensor, for reshaping 2-D Gemm outputs back.
    bs: String,
}

fn linear(b: &mut B, c: &Ctx, x: &str, wname: &str, bname: &str, transpose_node: bool) -> String {
    let (w, bias) = (get(c.w, wname), get(c.w, bname));
    let out_f = w.shape[0];
    if c.style == OnnxStyle::GemmTanh {
        let in_f = w.shape[1] as i64;
        let s2 = b.ints(&[-1, in_f]);
        let x2 = b.node("Reshape", &[x, &s2], vec![]);
        let wi = b.weight(&w.shape, &w.data);
        let bi = b.weight(&bias.shape, &bias.data);
        let y = b.node("Gemm", &[&x2, &wi, &bi], vec![a_int("transB", 1)]);
        let tail = b.ints(&[out_f as i64]);
        let s3 = b.node("Concat", &[&c.bs, &tail], vec![a_int("axis", 0)]);
        return b.node("Reshape", &[&y, &s3], vec![]);
    }
    let wi = if transpose_node {
        let stored = b.weight(&w.shape, &w.data);
        b.node("Transpose", &[&stored], vec![a_ints("perm", &[1, 0])])
    } else {
        b.weight(&[w.shape[1], w.shape[0]], &transposed(w))
    };
    let y = b.node("MatMul", &[x, &wi], vec![]);
    let bi = b.weight(&bias.shape, &bias.data);
    b.node("Add", &[&y, &bi], vec![])
}

fn layer_norm(b: &mut B, c: &Ctx, x: &str, gname: &str, bname: &str, eps: f32) -> String {
    let (g, be) = (get(c.w, gname), get(c.w, bname));
    let gi = b.weight(&g.shape, &g.data);
    let bi = b.weight(&be.shape, &be.data);
    if c.style != OnnxStyle::DecomposedLn {
        return b.node(
            "LayerNormalization",
            &[x, &gi, &bi],
            vec![a_int("axis", -1), a_float("epsilon", eps)],
        );
    }
    let mean = b.node("ReduceMean", &[x], vec![a_ints("axes", &[-1])]);
    let d = b.node("Sub", &[x, &mean], vec![]);
    let two = b.scalar(2.0);
    let p = b.node("Pow", &[&d, &two], vec![]);
    let var = b.node("ReduceMean", &[&p], vec![a_ints("axes", &[-1])]);
    let e = b.scalar(eps);
    let ve = b.node("Add", &[&var, &e], vec![]);
    let sd = b.node("Sqrt", &[&ve], vec![]);
    let n = b.node("Div", &[&d, &sd], vec![]);
    let y = b.node("Mul", &[&n, &gi], vec![]);
    b.node("Add", &[&y, &bi], vec![])
}

fn gelu(b: &mut B, c: &Ctx, x: &str) -> String {
    let half = b.scalar(0.5);
    let one = b.scalar(1.0);
    if c.style == OnnxStyle::GemmTanh {
        let three = b.scalar(3.0);
        let k = b.scalar(0.044715);
        let s = b.scalar((2.0f32 / std::f32::consts::PI).sqrt());
        let x3 = b.node("Pow", &[x, &three], vec![]);
        let kx3 = b.node("Mul", &[&x3, &k], vec![]);
        let inner = b.node("Add", &[x, &kx3], vec![]);
        let si = b.node("Mul", &[&inner, &s], vec![]);
        let t = b.node("Tanh", &[&si], vec![]);
        let t1 = b.node("Add", &[&t, &one], vec![]);
        let hx = b.node("Mul", &[x, &half], vec![]);
        return b.node("Mul", &[&hx, &t1], vec![]);
    }
    let r2 = b.scalar(std::f32::consts::SQRT_2);
    let d = b.node("Div", &[x, &r2], vec![]);
    let e = b.node("Erf", &[&d], vec![]);
    let e1 = b.node("Add", &[&e, &one], vec![]);
    let m = b.node("Mul", &[x, &e1], vec![]);
    b.node("Mul", &[&m, &half], vec![])
}

fn layer(b: &mut B, c: &Ctx, h: &str, mask: &str, i: usize) -> String {
    let cfg = tiny_config();
    let (nh, dh) = (cfg.num_heads as i64, cfg.head_dim as i64);
    let n = |t: LayerTensor| t.name(i);
    use LayerTensor as T;
    let q = linear(b, c, h, &n(T::QueryWeight), &n(T::QueryBias), false);
    let k = linear(
        b,
        c,
        h,
        &n(T::KeyWeight),
        &n(T::KeyBias),
        c.style != OnnxStyle::GemmTanh,
    );
    let v = linear(b, c, h, &n(T::ValueWeight), &n(T::ValueBias), false);
    let heads = b.ints(&[0, 0, nh, dh]);
    let q4 = b.node("Reshape", &[&q, &heads], vec![]);
    let k4 = b.node("Reshape", &[&k, &heads], vec![]);
    let v4 = b.node("Reshape", &[&v, &heads], vec![]);
    let qt = b.node("Transpose", &[&q4], vec![a_ints("perm", &[0, 2, 1, 3])]);
    let kt = b.node("Transpose", &[&k4], vec![a_ints("perm", &[0, 2, 3, 1])]);
    let vt = b.node("Transpose", &[&v4], vec![a_ints("perm", &[0, 2, 1, 3])]);
    let s = b.node("MatMul", &[&qt, &kt], vec![]);
    let scale = b.scalar((dh as f32).sqrt());
    let s = b.node("Div", &[&s, &scale], vec![]);
    let s = b.node("Add", &[&s, mask], vec![]);
    let p = b.node("Softmax", &[&s], vec![a_int("axis", -1)]);
    let ctx = b.node("MatMul", &[&p, &vt], vec![]);
    let ctx = b.node("Transpose", &[&ctx], vec![a_ints("perm", &[0, 2, 1, 3])]);
    let flat = b.ints(&[0, 0, cfg.hidden_size as i64]);
    let ctx = b.node("Reshape", &[&ctx, &flat], vec![]);
    let o = linear(b, c, &ctx, &n(T::OutputWeight), &n(T::OutputBias), false);
    let r = b.node("Add", &[&o, h], vec![]);
    let eps = cfg.layer_norm_eps as f32;
    let h1 = layer_norm(
        b,
        c,
        &r,
        &n(T::AttentionLnWeight),
        &n(T::AttentionLnBias),
        eps,
    );
    let f = linear(
        b,
        c,
        &h1,
        &n(T::IntermediateWeight),
        &n(T::IntermediateBias),
        false,
    );
    let g = gelu(b, c, &f);
    let f2 = linear(
        b,
        c,
        &g,
        &n(T::FfnOutputWeight),
        &n(T::FfnOutputBias),
        false,
    );
    let r2 = b.node("Add", &[&f2, &h1], vec![]);
    layer_norm(b, c, &r2, &n(T::FfnLnWeight), &n(T::FfnLnBias), eps)
}

fn value_info(name: &str, elem: i32, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            }),
        }),
    }
}

/// Writes the tiny BERT as an ONNX model in `style` (the `External` style also writes
/// `<file stem>.data` beside it).
pub fn write_onnx(path: &Path, style: OnnxStyle) -> io::Result<()> {
    let cfg = tiny_config();
    let w = tiny_weights();
    let data_file = path
        .file_stem()
        .map(|s| format!("{}.data", s.to_string_lossy()))
        .unwrap_or_else(|| "model.data".into());
    let mut b = B {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
        external: None,
    };
    if style == OnnxStyle::External {
        b.external = Some((data_file.clone(), Vec::new()));
    }
    // [batch, seq] and the position ids 0..seq.
    let shape = b.node("Shape", &["input_ids"], vec![]);
    let (s0, s2, ax) = (b.ints(&[0]), b.ints(&[2]), b.ints(&[0]));
    let bs = b.node("Slice", &[&shape, &s0, &s2, &ax], vec![]);
    let one_i = b.int_scalar(1);
    let seq = b.node("Gather", &[&shape, &one_i], vec![a_int("axis", 0)]);
    let zero_i = b.int_scalar(0);
    let pos_ids = b.node("Range", &[&zero_i, &seq, &one_i], vec![]);
    let c = Ctx { style, w: &w, bs };

    let t = |n: &str| get(&w, n).clone();
    let (we, pe, te) = (
        t(names::WORD_EMBEDDINGS),
        t(names::POSITION_EMBEDDINGS),
        t(names::TOKEN_TYPE_EMBEDDINGS),
    );
    let wi = b.weight(&we.shape, &we.data);
    let pi = b.weight(&pe.shape, &pe.data);
    let ti = b.weight(&te.shape, &te.data);
    let word = b.node("Gather", &[&wi, "input_ids"], vec![]);
    let tt = b.node("Gather", &[&ti, "token_type_ids"], vec![]);
    let pos = b.node("Gather", &[&pi, &pos_ids], vec![]);
    let sum = b.node("Add", &[&word, &tt], vec![]);
    let sum = b.node("Add", &[&sum, &pos], vec![]);
    let eps = cfg.layer_norm_eps as f32;
    let mut h = layer_norm(
        &mut b,
        &c,
        &sum,
        names::EMBEDDINGS_LN_WEIGHT,
        names::EMBEDDINGS_LN_BIAS,
        eps,
    );

    // Additive mask [batch, 1, 1, seq]: 0 where attended, -10000 where padded.
    let mf = b.node(
        "Cast",
        &["attention_mask"],
        vec![a_int("to", data_type::FLOAT as i64)],
    );
    let axes = b.ints(&[1, 2]);
    let m4 = b.node("Unsqueeze", &[&mf, &axes], vec![]);
    let onef = b.scalar(1.0);
    let inv = b.node("Sub", &[&onef, &m4], vec![]);
    let big = b.scalar(-10000.0);
    let mask = b.node("Mul", &[&inv, &big], vec![]);

    for i in 0..cfg.num_layers as usize {
        h = layer(&mut b, &c, &h, &mask, i);
    }
    b.nodes.push(NodeProto {
        input: vec![h],
        output: vec!["last_hidden_state".into()],
        name: "output".into(),
        op_type: "Identity".into(),
        ..Default::default()
    });
    let dyn_dim = |p: &str| Dimension {
        dim_value: None,
        dim_param: Some(p.into()),
    };
    let bs_dims = [dyn_dim("batch"), dyn_dim("sequence")];
    let out_dims = [
        dyn_dim("batch"),
        dyn_dim("sequence"),
        Dimension {
            dim_value: Some(cfg.hidden_size as i64),
            dim_param: None,
        },
    ];
    let graph = GraphProto {
        node: b.nodes,
        name: "tiny_bert".into(),
        initializer: b.inits,
        input: ["input_ids", "attention_mask", "token_type_ids"]
            .iter()
            .map(|n| value_info(n, data_type::INT64, &bs_dims))
            .collect(),
        output: vec![value_info("last_hidden_state", data_type::FLOAT, &out_dims)],
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "ets-synth".into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
    };
    if let Some((file, buf)) = &b.external {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::write(dir.join(file), buf)?;
    }
    std::fs::write(path, model.encode_to_vec())
}

/// Writes a small non-BERT graph for error tests: `x [1, 8]` through a constant `MatMul`, then
/// one node per entry of `ops` (each applied to the previous output), with the given opset.
pub fn write_toy_onnx(path: &Path, ops: &[&str], opset: i64) -> io::Result<()> {
    let mut b = B {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
        external: None,
    };
    let w = b.weight(&[8, 8], &[0.5; 64]);
    let mut cur = b.node("MatMul", &["x", &w], vec![]);
    for op in ops {
        cur = b.node(op, &[&cur], vec![]);
    }
    b.nodes.push(NodeProto {
        input: vec![cur],
        output: vec!["y".into()],
        name: "output".into(),
        op_type: "Identity".into(),
        ..Default::default()
    });
    let d = |v: i64| Dimension {
        dim_value: Some(v),
        dim_param: None,
    };
    let graph = GraphProto {
        node: b.nodes,
        name: "toy".into(),
        initializer: b.inits,
        input: vec![value_info("x", data_type::FLOAT, &[d(1), d(8)])],
        output: vec![value_info("y", data_type::FLOAT, &[d(1), d(8)])],
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "ets-synth".into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
    };
    std::fs::write(path, model.encode_to_vec())
}
