//! Head pruning: which heads each layer keeps, and slicing Q, K, V (rows) and O (columns) to them.

use std::collections::BTreeMap;

use super::{as_matrix, ConvertError};
use crate::format::names::LayerTensor;
use crate::format::ModelConfig;
use crate::ingest::{ModelSource, SourceTensor};
use crate::prune::{select, Role};

/// Kept heads per layer, decided on first use.
#[derive(Debug, Default)]
pub(super) struct HeadPlan {
    kept: BTreeMap<usize, Vec<usize>>,
}

impl HeadPlan {
    /// A plan whose layers in `kept` keep those heads (chosen by calibration); the others are
    /// ranked by weight norms on first use.
    pub fn chosen(kept: BTreeMap<usize, Vec<usize>>) -> HeadPlan {
        HeadPlan { kept }
    }

    /// Whether heads of `layer` were pruned.
    pub fn is_pruned(&self, layer: usize) -> bool {
        self.kept.contains_key(&layer)
    }

    /// The heads `layer` keeps, ranking them (from Q, K, V and O) the first time.
    pub fn kept(
        &mut self,
        source: &dyn ModelSource,
        config: &ModelConfig,
        layer: usize,
        sparsity: f64,
    ) -> Result<&[usize], ConvertError> {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.kept.entry(layer) {
            let load = |t: LayerTensor| source.load(&t.name(layer));
            let q = load(LayerTensor::QueryWeight)?;
            let k = load(LayerTensor::KeyWeight)?;
            let v = load(LayerTensor::ValueWeight)?;
            let o = load(LayerTensor::OutputWeight)?;
            let qn = LayerTensor::QueryWeight.name(layer);
            let on = LayerTensor::OutputWeight.name(layer);
            let kept = select::top_heads(
                [
                    as_matrix(&qn, &q)?,
                    as_matrix(&qn, &k)?,
                    as_matrix(&qn, &v)?,
                ],
                as_matrix(&on, &o)?,
                config.num_heads as usize,
                config.head_dim as usize,
                1.0 - sparsity,
            );
            slot.insert(kept);
        }
        Ok(self.kept.get(&layer).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// Writes the kept head counts into the configuration.
    pub fn apply(&self, config: &mut ModelConfig) {
        for (&layer, kept) in &self.kept {
            if let Some(h) = config.heads_per_layer.get_mut(layer) {
                *h = kept.len() as u32;
            }
        }
    }
}

/// Layer and role of a Q, K or V bias (they follow their weight under head pruning).
pub(super) fn bias_role(name: &str) -> Option<(usize, Role)> {
    let (layer, t) = LayerTensor::parse(name)?;
    let role = match t {
        LayerTensor::QueryBias => Role::Query,
        LayerTensor::KeyBias => Role::Key,
        LayerTensor::ValueBias => Role::Value,
        _ => return None,
    };
    Some((layer, role))
}

/// Keeps the rows (Q, K, V weights and biases) or columns (O weight) of the kept heads.
pub(super) fn slice_weight(
    config: &ModelConfig,
    role: Role,
    t: &SourceTensor,
    kept: &[usize],
) -> SourceTensor {
    let hd = config.head_dim as usize;
    match (role, &t.shape[..]) {
        (Role::Query | Role::Key | Role::Value, [rows, cols]) if kept.len() * hd <= *rows => {
            let mut data = Vec::with_capacity(kept.len() * hd * cols);
            for &h in kept {
                data.extend_from_slice(&t.data[h * hd * cols..(h + 1) * hd * cols]);
            }
            SourceTensor {
                shape: vec![kept.len() * hd, *cols],
                data,
            }
        }
        (Role::Query | Role::Key | Role::Value, [n]) if kept.len() * hd <= *n => SourceTensor {
            shape: vec![kept.len() * hd],
            data: kept
                .iter()
                .flat_map(|&h| t.data[h * hd..(h + 1) * hd].iter().copied())
                .collect(),
        },
        (Role::Output, [rows, cols]) if kept.len() * hd <= *cols => {
            let mut data = Vec::with_capacity(rows * kept.len() * hd);
            for row in t.data.chunks(*cols) {
                for &h in kept {
                    data.extend_from_slice(&row[h * hd..(h + 1) * hd]);
                }
            }
            SourceTensor {
                shape: vec![*rows, kept.len() * hd],
                data,
            }
        }
        _ => t.clone(),
    }
}
