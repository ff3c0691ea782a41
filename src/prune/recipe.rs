//! Which method and sparsity apply to each weight: the recipe and its precedence rules.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::names::LayerTensor;

/// A pruning method (see the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Keep the highest-norm tiles.
    Tile,
    /// Keep the same number of highest-norm tiles in every block row.
    TileBalanced,
    /// Every group of block rows covering 128 output features keeps the same tile columns, the
    /// ones with the highest summed norm over the group: a GEMM that works on such a group reads
    /// its activations only where products happen.
    TileGrouped,
    /// Keep the highest-norm whole rows.
    Rows,
    /// Keep the highest-norm whole columns.
    Cols,
    /// Keep the largest elements, stored as tiles with element bitmaps.
    Irregular,
    /// Tiles for Q, K, O and the FFN; whole rows of V, equally many in each head.
    AttentionAware,
    /// Remove whole attention heads (Q, K, V rows and O columns of a head).
    Heads,
    /// Keep exactly the zeros already in the weights (absent tiles and element bitmaps).
    Existing,
    /// Dense pass-through.
    None,
}

impl Method {
    /// Every method, for help texts and tests.
    pub const ALL: [Method; 10] = [
        Method::Tile,
        Method::TileBalanced,
        Method::TileGrouped,
        Method::Rows,
        Method::Cols,
        Method::Irregular,
        Method::AttentionAware,
        Method::Heads,
        Method::Existing,
        Method::None,
    ];

    /// The name on the command line and in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Method::Tile => "tile",
            Method::TileBalanced => "tile-balanced",
            Method::TileGrouped => "tile-grouped",
            Method::Rows => "rows",
            Method::Cols => "cols",
            Method::Irregular => "irregular",
            Method::AttentionAware => "attention-aware",
            Method::Heads => "heads",
            Method::Existing => "existing",
            Method::None => "none",
        }
    }

    /// Parses a method name.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// The role of a linear weight inside a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Attention query projection.
    Query,
    /// Attention key projection.
    Key,
    /// Attention value projection.
    Value,
    /// Attention output projection.
    Output,
    /// FFN input projection.
    Intermediate,
    /// FFN output projection.
    FfnOutput,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Query,
        Role::Key,
        Role::Value,
        Role::Output,
        Role::Intermediate,
        Role::FfnOutput,
    ];
    /// The name in recipes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Query => "query",
            Role::Key => "key",
            Role::Value => "value",
            Role::Output => "output",
            Role::Intermediate => "intermediate",
            Role::FfnOutput => "ffn_output",
        }
    }
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
    /// The role of a layer tensor, when it is a linear weight.
    pub fn of(t: LayerTensor) -> Option<Role> {
        match t {
            LayerTensor::QueryWeight => Some(Role::Query),
            LayerTensor::KeyWeight => Some(Role::Key),
            LayerTensor::ValueWeight => Some(Role::Value),
            LayerTensor::OutputWeight => Some(Role::Output),
            LayerTensor::IntermediateWeight => Some(Role::Intermediate),
            LayerTensor::FfnOutputWeight => Some(Role::FfnOutput),
            _ => None,
        }
    }
    /// Parses a canonical weight name `layers.{i}.{suffix}` into layer and role.
    pub fn of_name(name: &str) -> Option<(usize, Role)> {
        let (layer, t) = LayerTensor::parse(name)?;
        Some((layer, Role::of(t)?))
    }
}

/// An override for one tensor in a recipe file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    /// Method for this tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Sparsity for this tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
}

/// The whole pruning recipe: what the command line and a recipe file say, and what the output
/// file records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Default method for every linear weight.
    pub method: Method,
    /// Global sparsity target (fraction of each weight removed), 0 to 1.
    #[serde(default)]
    pub sparsity: f64,
    /// Tile shape `[rows, cols]`.
    #[serde(default = "default_tile")]
    pub tile: [usize; 2],
    /// Sparsity per role (overrides the global target).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<Role, f64>,
    /// Sparsity per layer index (overrides roles).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<usize, f64>,
    /// Method and sparsity per canonical tensor name (overrides everything).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tensors: BTreeMap<String, TensorOverride>,
}

fn default_tile() -> [usize; 2] {
    [32, 32]
}

/// What applies to one tensor after the precedence rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorPlan {
    /// Method.
    pub method: Method,
    /// Fraction removed.
    pub sparsity: f64,
    /// Tile shape.
    pub tile: (usize, usize),
}

/// A recipe that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file could not be read or parsed.
    #[error("recipe {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A value is out of range or names something unknown.
    #[error("recipe: {0}")]
    Invalid(String),
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            method: Method::None,
            sparsity: 0.0,
            tile: default_tile(),
            roles: BTreeMap::new(),
            layers: BTreeMap::new(),
            tensors: BTreeMap::new(),
        }
    }
}

impl Recipe {
    /// Reads a JSON recipe file.
    pub fn from_file(path: &Path) -> Result<Recipe, RecipeError> {
        let err = |reason: String| RecipeError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = crate::files::read_capped(path, crate::files::MAX_RECIPE_BYTES)
            .map_err(|e| err(e.to_string()))?;
        let recipe: Recipe = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        Ok(recipe)
    }

    /// Checks ranges and names against a model with `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<(), RecipeError> {
        let check = |what: &str, s: f64| {
            if (0.0..1.0).contains(&s) {
                Ok(())
            } else {
                Err(RecipeError::Invalid(format!(
                    "{what} sparsity {s} must be at least 0 and below 1"
                )))
            }
        };
        check("global", self.sparsity)?;
        for (r, s) in &self.roles {
            check(r.name(), *s)?;
        }
        for (l, s) in &self.layers {
            if *l >= layers {
                return Err(RecipeError::Invalid(format!(
                    "layer {l} does not exist (the model has {layers})"
                )));
            }
            check(&format!("layer {l}"), *s)?;
        }
        for (name, o) in &self.tensors {
            match Role::of_name(name) {
                Some((l, _)) if l < layers => {}
                _ => {
                    return Err(RecipeError::Invalid(format!(
                        "{name:?} is not a prunable weight of this model"
                    )))
                }
            }
            if let Some(s) = o.sparsity {
                check(name, s)?;
            }
        }
        let edges = crate::format::TILE_EDGES;
        if !self
            .tile
            .iter()
            .all(|e| edges.iter().any(|&t| t as usize == *e))
        {
            return Err(RecipeError::Invalid(format!(
                "tile {}x{}: edges must be 8, 16, 32, 64 or 128",
                self.tile[0], self.tile[1]
            )));
        }
        Ok(())
    }

    /// Sparsity above which structured pruning (tiles, rows, columns, heads) without
    /// calibration data loses most of a model's accuracy: weight norms alone pick the wrong units.
    pub const UNCALIBRATED_LIMIT: f64 = 0.10;

    /// The highest sparsity any structured method (tiles, rows, columns, heads) of this recipe
    /// asks for, over the global target and every override; 0 when none applies.
    pub fn structured_max_sparsity(&self) -> f64 {
        let structured =
            |m: Method| !matches!(m, Method::None | Method::Existing | Method::Irregular);
        let mut top = 0f64;
        if structured(self.method) {
            top = self
                .roles
                .values()
                .chain(self.layers.values())
                .fold(self.sparsity, |a, &b| a.max(b));
        }
        for o in self.tensors.values() {
            let method = o.method.unwrap_or(self.method);
            if structured(method) {
                top = top.max(o.sparsity.unwrap_or(self.sparsity));
            }
        }
        top
    }

    /// The plan for weight `name` of `layer` with `role`: tensor override, then layer, then role,
    /// then the global target.
    pub fn plan(&self, name: &str, layer: usize, role: Role) -> TensorPlan {
        let o = self.tensors.get(name);
        let sparsity = o
            .and_then(|o| o.sparsity)
            .or_else(|| self.layers.get(&layer).copied())
            .or_else(|| self.roles.get(&role).copied())
            .unwrap_or(self.sparsity);
        let method = o.and_then(|o| o.method).unwrap_or(self.method);
        TensorPlan {
            method,
            sparsity: if method == Method::None || method == Method::Existing {
                0.0
            } else {
                sparsity
            },
            tile: (self.tile[0], self.tile[1]),
        }
    }
}
