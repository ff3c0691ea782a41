//! The embedding block: word, position and token-type tables and the sum that feeds the first
//! LayerNorm.
//!
//! Tables are `Gather`s on constant `[rows, hidden]` tensors. The word table is the largest one
//! indexed from a graph input; a table indexed from a `token_type`/`segment` input is the
//! token-type table; of the rest the smaller is token-type, the larger position. Exporters that
//! fix the sequence length may fold a lookup into a constant `[1, S, H]` added to the sum: one
//! whose rows are all equal is the token-type row 0, otherwise it is the first `S` positions.

use std::collections::HashMap;

use super::expr::Expr;
use super::graph::{attr, Graph};
use super::structure::{Entry, Post};
use crate::format::names;
use crate::ingest::IngestError;

/// What [`embeddings`] found.
pub(crate) struct Embeddings {
    pub entries: Vec<(String, Entry)>,
    /// Index of the embedding LayerNorm among the graph's LayerNorms.
    pub ln: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_pos: usize,
    pub type_vocab: usize,
}

struct Table {
    node: usize,
    output: String,
    expr: Expr,
    rows: usize,
    cols: usize,
    roots: Vec<String>,
}

fn type_like(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("token_type") || n.contains("segment") || n.contains("type_ids")
}

/// Finds the embedding tables and the embedding LayerNorm.
pub(crate) fn embeddings(
    gr: &Graph,
    ln_at: &HashMap<String, usize>,
) -> Result<Embeddings, IngestError> {
    let not_bert = |at: &str, reason: &str| IngestError::NotBert {
        path: gr.ctx.path.clone(),
        at: at.to_string(),
        reason: reason.to_string(),
    };
    let mut tables = Vec::new();
    for &i in &gr.order {
        let n = gr.node(i);
        if n.op_type != "Gather" || attr(n, "axis").is_some_and(|a| a.i != 0) {
            continue;
        }
        let (Some(data), Some(idx), Some(out)) =
            (n.input.first(), n.input.get(1), n.output.first())
        else {
            continue;
        };
        let Some(expr) = gr.const_expr(data) else {
            continue;
        };
        let shape = expr.shape(gr.ctx, gr.g)?;
        let [rows, cols] = shape[..] else { continue };
        let roots = gr.input_roots(idx).into_iter().map(String::from).collect();
        tables.push(Table {
            node: i,
            output: out.clone(),
            expr,
            rows,
            cols,
            roots,
        });
    }
    let word = tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.roots.iter().any(|r| !type_like(r)))
        .max_by_key(|(_, t)| t.rows)
        .map(|(k, _)| k)
        .ok_or_else(|| {
            not_bert(
                "graph inputs",
                "no Gather on an embedding table indexed by the input ids",
            )
        })?;
    let hidden = tables[word].cols;
    let mut tt: Option<usize> = None;
    let mut pos: Option<usize> = None;
    let mut rest: Vec<usize> = Vec::new();
    for (k, t) in tables.iter().enumerate() {
        if k == word || t.cols != hidden {
            continue;
        }
        if t.roots.iter().any(|r| type_like(r)) && tt.is_none() {
            tt = Some(k);
        } else {
            rest.push(k);
        }
    }
    rest.sort_by_key(|&k| tables[k].rows);
    match (tt.is_some(), rest.as_slice()) {
        (false, [a, b]) => (tt, pos) = (Some(*a), Some(*b)),
        (_, [a]) if tt.is_some() => pos = Some(*a),
        (false, [a]) => pos = Some(*a),
        (_, []) => {}
        _ => {
            return Err(not_bert(
                &gr.node(tables[word].node).name,
                "more embedding tables than word, position and token type",
            ))
        }
    }

    // Walk the sum from the word lookup to the LayerNorm, collecting folded constants.
    let table_outputs: Vec<&str> = tables.iter().map(|t| t.output.as_str()).collect();
    let mut cur = tables[word].output.clone();
    let mut folded: Vec<Expr> = Vec::new();
    let ln = loop {
        if let Some(&k) = ln_at.get(&cur) {
            break k;
        }
        let [c] = gr.consumers_of(&cur) else {
            return Err(not_bert(
                &cur,
                "the embedding sum does not lead to a single LayerNorm",
            ));
        };
        let n = gr.node(*c);
        if n.op_type == "Add" {
            let other = n
                .input
                .iter()
                .find(|x| **x != cur)
                .cloned()
                .unwrap_or_default();
            if !table_outputs.contains(&other.as_str()) {
                match gr.const_expr(&other) {
                    Some(e) => folded.push(e),
                    None => {
                        return Err(not_bert(&n.name, "unexpected operand in the embedding sum"))
                    }
                }
            }
        } else if !matches!(n.op_type.as_str(), "Cast" | "Identity" | "Reshape") {
            return Err(not_bert(
                &n.name,
                "unexpected operator in the embedding sum",
            ));
        }
        cur = n.output.first().cloned().unwrap_or_default();
        if folded.len() > 4 {
            return Err(not_bert(&n.name, "embedding sum too long"));
        }
    };

    let entry = |t: &Table| Entry {
        expr: Some(t.expr.clone()),
        post: Post::Keep,
        shape: vec![t.rows, t.cols],
    };
    let mut tt_entry = tt.map(|k| entry(&tables[k]));
    let mut pos_entry = pos.map(|k| entry(&tables[k]));
    for e in folded {
        let arr = e.eval(gr.ctx, gr.g)?;
        let desc = e.describe(gr.g);
        let s = arr.shape.len();
        let (rows, cols) = match arr.shape[..] {
            [r, c] | [1, r, c] => (r, c),
            _ => {
                return Err(not_bert(
                    &desc,
                    "folded embedding constant is not [S, H] or [1, S, H]",
                ))
            }
        };
        if cols != hidden || s == 0 {
            return Err(not_bert(
                &desc,
                "folded embedding constant has the wrong width",
            ));
        }
        let first = arr.data.get(..cols).unwrap_or(&[]);
        let same_rows = arr.data.chunks_exact(cols).all(|r| r == first);
        if same_rows && rows > 1 && tt_entry.is_none() {
            tt_entry = Some(Entry {
                expr: Some(e),
                post: Post::FirstRow,
                shape: vec![1, cols],
            });
        } else if pos_entry.is_none() {
            pos_entry = Some(Entry {
                expr: Some(e),
                post: Post::DropLeading,
                shape: vec![rows, cols],
            });
        } else {
            return Err(not_bert(
                &desc,
                "cannot tell which embedding this constant folds",
            ));
        }
    }
    let pos_entry = pos_entry.ok_or_else(|| not_bert(&cur, "no position embeddings found"))?;
    // A graph without token types behaves as if every token had type 0 with a zero row.
    let tt_entry = tt_entry.unwrap_or(Entry {
        expr: None,
        post: Post::Keep,
        shape: vec![1, hidden],
    });
    let (max_pos, type_vocab) = (pos_entry.shape[0], tt_entry.shape[0]);
    let vocab = tables[word].rows;
    Ok(Embeddings {
        entries: vec![
            (names::WORD_EMBEDDINGS.into(), entry(&tables[word])),
            (names::POSITION_EMBEDDINGS.into(), pos_entry),
            (names::TOKEN_TYPE_EMBEDDINGS.into(), tt_entry),
        ],
        ln,
        hidden,
        vocab,
        max_pos,
        type_vocab,
    })
}
