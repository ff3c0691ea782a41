//! BERT encoders exported to ONNX (opsets 11 to 21), weights inline or external, f32/f16 or int8.

mod embed;
mod expr;
mod graph;
pub(crate) mod proto;
mod structure;
mod tensor;

use std::path::{Path, PathBuf};

use prost::Message;

use self::expr::{transpose, Array};
use self::graph::{check_ops, Graph};
use self::proto::{GraphProto, ModelProto};
use self::structure::{Entry, Post};
use self::tensor::{check_external, Ctx};
use super::{
    check_shapes, find_tokenizer, map_file, IngestError, IngestOptions, ModelSource,
    SourceProvenance, SourceTensor, TokenizerBlob,
};
use crate::format::{ModelConfig, Provenance};

/// Lowest default-domain opset accepted.
pub const MIN_OPSET: i64 = 11;
/// Highest default-domain opset accepted.
pub const MAX_OPSET: i64 = 21;

/// A mapped ONNX model whose BERT structure has been found in the graph.
pub struct OnnxSource {
    ctx: Ctx,
    graph: GraphProto,
    config: ModelConfig,
    entries: Vec<(String, Entry)>,
    provenance: SourceProvenance,
    tokenizer: Option<TokenizerBlob>,
}

impl std::fmt::Debug for OnnxSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxSource")
            .field("path", &self.ctx.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn post_shape(shape: &[usize], post: Post) -> Vec<usize> {
    match post {
        Post::Keep => shape.to_vec(),
        Post::Transpose => shape.iter().rev().copied().collect(),
        Post::DropLeading => {
            let skip = shape
                .iter()
                .take_while(|&&d| d == 1)
                .count()
                .min(shape.len().saturating_sub(1));
            shape.get(skip..).unwrap_or(&[]).to_vec()
        }
        Post::FirstRow => vec![1, shape.last().copied().unwrap_or(0)],
    }
}

impl OnnxSource {
    /// Maps and decodes `path`, checks opset and operators, and finds the BERT structure.
    pub fn open(path: &Path, opts: &IngestOptions) -> Result<Self, IngestError> {
        let map = map_file(path)?;
        let provenance = SourceProvenance::start(path);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let ctx = Ctx {
            path: path.to_path_buf(),
            dir,
        };
        if let Some(n) = proto::count_nodes(&map).filter(|&n| n > proto::MAX_NODES) {
            return Err(IngestError::OnnxDecode {
                path: path.to_path_buf(),
                reason: format!(
                    "the graph has {n} nodes, more than the limit of {}",
                    proto::MAX_NODES
                ),
            });
        }
        // Decoding from the mapped bytes makes every raw_data a slice of the map, not a copy.
        let model = ModelProto::decode(bytes::Bytes::from_owner(map)).map_err(|e| {
            IngestError::OnnxDecode {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| IngestError::OnnxDecode {
                path: path.to_path_buf(),
                reason: "no opset_import for the default domain".into(),
            })?;
        if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
            return Err(IngestError::UnsupportedOpset {
                path: path.to_path_buf(),
                opset,
            });
        }
        let graph = model.graph.ok_or_else(|| IngestError::OnnxDecode {
            path: path.to_path_buf(),
            reason: "the model has no graph".into(),
        })?;
        check_ops(&ctx, &graph)?;
        check_unique_initializers(&ctx, &graph)?;
        for t in &graph.initializer {
            check_external(&ctx, t)?;
        }
        let plan = {
            let gr = Graph::new(&graph, &ctx)?;
            structure::analyse(&gr)?
        };
        let mut shapes = Vec::with_capacity(plan.entries.len());
        for (name, e) in &plan.entries {
            let s = match &e.expr {
                Some(x) => post_shape(&x.shape(&ctx, &graph)?, e.post),
                None => e.shape.clone(),
            };
            let src = e
                .expr
                .as_ref()
                .map(|x| x.describe(&graph))
                .unwrap_or_else(|| "zeros".into());
            shapes.push((name.clone(), src, s));
        }
        let wanted: Vec<String> = plan.entries.iter().map(|(n, _)| n.clone()).collect();
        check_shapes(path, &plan.config, &wanted, |n| {
            shapes
                .iter()
                .find(|(k, _, _)| k == n)
                .map(|(_, src, s)| (src.clone(), s.clone()))
        })?;
        let tokenizer = find_tokenizer(path, opts)?;
        Ok(OnnxSource {
            ctx,
            graph,
            config: plan.config,
            entries: plan.entries,
            provenance,
            tokenizer,
        })
    }
}

/// Refuses a graph in which two initializers share a name: which one a node reads would depend on
/// the reader.
fn check_unique_initializers(ctx: &Ctx, g: &GraphProto) -> Result<(), IngestError> {
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<&str> = g
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !seen.insert(*n))
        .collect();
    match dups.first() {
        None => Ok(()),
        Some(first) => Err(IngestError::OnnxDecode {
            path: ctx.path.clone(),
            reason: format!(
                "the initializer name {first:?} appears more than once ({} repeated name(s)); \
                 each initializer must have its own name",
                dups.len()
            ),
        }),
    }
}

impl ModelSource for OnnxSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tensor_names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }

    fn load(&self, name: &str) -> Result<SourceTensor, IngestError> {
        let (_, e) = self
            .entries
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| IngestError::NoSuchTensor {
                path: self.ctx.path.clone(),
                name: name.to_string(),
            })?;
        let Some(x) = &e.expr else {
            return Ok(SourceTensor {
                shape: e.shape.clone(),
                data: vec![0.0; e.shape.iter().product()],
            });
        };
        let a = x.eval(&self.ctx, &self.graph)?;
        let bad = |reason: &str| IngestError::BadTensor {
            path: self.ctx.path.clone(),
            tensor: x.describe(&self.graph),
            reason: reason.to_string(),
        };
        let out = match e.post {
            Post::Keep | Post::DropLeading => Array {
                shape: post_shape(&a.shape, e.post),
                data: a.data,
            },
            Post::Transpose => {
                transpose(&a, &[1, 0]).ok_or_else(|| bad("cannot transpose: not 2-D"))?
            }
            Post::FirstRow => {
                let cols = a.shape.last().copied().unwrap_or(0);
                let row = a.data.get(..cols).ok_or_else(|| bad("empty"))?.to_vec();
                Array {
                    shape: vec![1, cols],
                    data: row,
                }
            }
        };
        if out.shape != e.shape {
            return Err(bad(&format!(
                "shape {:?}, expected {:?}",
                out.shape, e.shape
            )));
        }
        Ok(SourceTensor {
            shape: out.shape,
            data: out.data,
        })
    }

    fn provenance(&self) -> Provenance {
        self.provenance.get()
    }

    fn tokenizer(&self) -> Option<TokenizerBlob> {
        self.tokenizer.clone()
    }

    fn quantized_int8(&self) -> bool {
        use self::proto::data_type::{INT8, UINT8};
        self.graph
            .initializer
            .iter()
            .any(|t| matches!(t.data_type, INT8 | UINT8) && t.dims.iter().product::<i64>() >= 4096)
    }
}
