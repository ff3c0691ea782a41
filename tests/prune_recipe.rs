//! Recipe precedence (tensor > layer > role > global) and recipe files: parsing and errors.

use std::collections::BTreeMap;

use ets::format::names::LayerTensor;
use ets::prune::recipe::TensorOverride;
use ets::prune::{Method, Recipe, RecipeError, Role};

fn name(layer: usize, role: Role) -> String {
    let t = match role {
        Role::Query => LayerTensor::QueryWeight,
        Role::Key => LayerTensor::KeyWeight,
        Role::Value => LayerTensor::ValueWeight,
        Role::Output => LayerTensor::OutputWeight,
        Role::Intermediate => LayerTensor::IntermediateWeight,
        Role::FfnOutput => LayerTensor::FfnOutputWeight,
    };
    t.name(layer)
}

fn layered_recipe() -> Recipe {
    Recipe {
        method: Method::Tile,
        sparsity: 0.1,
        tile: [16, 32],
        roles: BTreeMap::from([(Role::Value, 0.2), (Role::Intermediate, 0.25)]),
        layers: BTreeMap::from([(1, 0.3)]),
        tensors: BTreeMap::from([
            (
                name(1, Role::Value),
                TensorOverride {
                    method: Some(Method::Rows),
                    sparsity: Some(0.4),
                },
            ),
            (
                name(0, Role::Query),
                TensorOverride {
                    method: Some(Method::Cols),
                    sparsity: None,
                },
            ),
            (
                name(2, Role::Key),
                TensorOverride {
                    method: None,
                    sparsity: Some(0.5),
                },
            ),
        ]),
    }
}

#[test]
fn precedence_is_tensor_then_layer_then_role_then_global() {
    let r = layered_recipe();
    r.validate(3).expect("valid");
    let plan = |l: usize, role: Role| r.plan(&name(l, role), l, role);
    // Global only.
    let p = plan(0, Role::Key);
    assert_eq!(
        (p.method, p.sparsity, p.tile),
        (Method::Tile, 0.1, (16, 32))
    );
    // Role beats global.
    assert_eq!(plan(0, Role::Value).sparsity, 0.2);
    assert_eq!(plan(2, Role::Intermediate).sparsity, 0.25);
    // Layer beats role and global.
    assert_eq!(plan(1, Role::Intermediate).sparsity, 0.3);
    assert_eq!(plan(1, Role::Key).sparsity, 0.3);
    // Tensor beats layer, role and global, for sparsity and method.
    let p = plan(1, Role::Value);
    assert_eq!((p.method, p.sparsity), (Method::Rows, 0.4));
    // A tensor override with only a method keeps the sparsity from the lower levels.
    let p = plan(0, Role::Query);
    assert_eq!((p.method, p.sparsity), (Method::Cols, 0.1));
    // A tensor override with only a sparsity keeps the global method.
    let p = plan(2, Role::Key);
    assert_eq!((p.method, p.sparsity), (Method::Tile, 0.5));
}

#[test]
fn methods_without_a_target_get_zero_sparsity() {
    for method in [Method::None, Method::Existing] {
        let r = Recipe {
            method,
            ..layered_recipe()
        };
        let p = r.plan(&name(0, Role::Key), 0, Role::Key);
        assert_eq!((p.method, p.sparsity), (method, 0.0));
    }
}

#[test]
fn method_and_role_names_round_trip() {
    for m in Method::ALL {
        assert_eq!(Method::parse(m.name()), Some(m));
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(json, format!("\"{}\"", m.name()));
    }
    for r in Role::ALL {
        assert_eq!(Role::parse(r.name()), Some(r));
        assert_eq!(Role::of_name(&name(7, r)), Some((7, r)));
    }
    assert_eq!(Method::parse("tiles"), None);
    assert_eq!(Role::parse("q"), None);
    assert_eq!(Role::of_name("layers.0.attention.query.bias"), None);
    assert_eq!(Role::of_name("embeddings.word_embeddings.weight"), None);
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("recipe.json");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn recipe_file_parses_every_field() {
    let dir = tempfile::tempdir().expect("dir");
    let text = r#"{
        "method": "tile-balanced",
        "sparsity": 0.6,
        "tile": [32, 8],
        "roles": {"value": 0.5, "ffn_output": 0.7},
        "layers": {"1": 0.2},
        "tensors": {"layers.0.attention.key.weight": {"method": "irregular", "sparsity": 0.9}}
    }"#;
    let r = Recipe::from_file(&write(&dir, text)).expect("parse");
    r.validate(2).expect("valid");
    assert_eq!(r.method, Method::TileBalanced);
    assert_eq!(r.sparsity, 0.6);
    assert_eq!(r.tile, [32, 8]);
    assert_eq!(r.roles.get(&Role::Value), Some(&0.5));
    assert_eq!(r.roles.get(&Role::FfnOutput), Some(&0.7));
    assert_eq!(r.layers.get(&1), Some(&0.2));
    let p = r.plan("layers.0.attention.key.weight", 0, Role::Key);
    assert_eq!(
        (p.method, p.sparsity, p.tile),
        (Method::Irregular, 0.9, (32, 8))
    );
    // Defaults: sparsity 0, tile 16x16, no overrides.
    let r = Recipe::from_file(&write(&dir, r#"{"method": "none"}"#)).expect("parse");
    assert_eq!(r, Recipe::default());
    // A recipe survives a JSON round trip (it is what the output file records).
    let back: Recipe =
        serde_json::from_value(serde_json::to_value(layered_recipe()).expect("to")).expect("from");
    assert_eq!(back, layered_recipe());
}

fn file_error(text: &str) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(&dir, text);
    match Recipe::from_file(&path) {
        Err(e @ RecipeError::File { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("recipe.json"), "message lacks the path: {msg}");
            msg
        }
        other => panic!("{text}: expected a file error, got {other:?}"),
    }
}

#[test]
fn recipe_file_errors() {
    let missing = Recipe::from_file(std::path::Path::new("no/such/recipe.json"));
    assert!(
        matches!(missing, Err(RecipeError::File { .. })),
        "{missing:?}"
    );
    file_error("{ not json");
    file_error("");
    file_error(r#"{"sparsity": 0.5}"#); // method is required
    let msg = file_error(r#"{"method": "magic"}"#);
    assert!(msg.contains("magic"), "{msg}");
    let msg = file_error(r#"{"method": "tile", "sparsty": 0.5}"#);
    assert!(msg.contains("sparsty"), "{msg}");
    file_error(r#"{"method": "tile", "roles": {"values": 0.5}}"#);
    file_error(r#"{"method": "tile", "tensors": {"x": {"method": "tile", "extra": 1}}}"#);
    file_error(r#"{"method": "tile", "tile": [16]}"#);
    file_error(r#"{"method": "tile", "layers": {"one": 0.5}}"#);
}

fn invalid(r: &Recipe, layers: usize) -> String {
    match r.validate(layers) {
        Err(e @ RecipeError::Invalid(_)) => e.to_string(),
        other => panic!("expected invalid, got {other:?} for {r:?}"),
    }
}

#[test]
fn recipe_validation_errors() {
    let base = Recipe {
        method: Method::Tile,
        sparsity: 0.5,
        ..Recipe::default()
    };
    base.validate(2).expect("base is valid");
    for s in [1.0, 1.5, -0.1, f64::NAN] {
        invalid(
            &Recipe {
                sparsity: s,
                ..base.clone()
            },
            2,
        );
        let roles = BTreeMap::from([(Role::Key, s)]);
        invalid(
            &Recipe {
                roles,
                ..base.clone()
            },
            2,
        );
    }
    let layers = BTreeMap::from([(2, 0.5)]);
    let msg = invalid(
        &Recipe {
            layers,
            ..base.clone()
        },
        2,
    );
    assert!(msg.contains("layer 2"), "{msg}");
    let layers = BTreeMap::from([(0, 1.0)]);
    invalid(
        &Recipe {
            layers,
            ..base.clone()
        },
        2,
    );
    for bad in [
        "embeddings.word_embeddings.weight",
        "layers.0.attention.query.bias",
        "layers.5.attention.query.weight",
        "layers.x.attention.query.weight",
    ] {
        let tensors = BTreeMap::from([(bad.to_string(), TensorOverride::default())]);
        let msg = invalid(
            &Recipe {
                tensors,
                ..base.clone()
            },
            2,
        );
        assert!(msg.contains(bad), "{msg}");
    }
    let tensors = BTreeMap::from([(
        "layers.1.ffn.output.weight".to_string(),
        TensorOverride {
            method: None,
            sparsity: Some(1.0),
        },
    )]);
    invalid(
        &Recipe {
            tensors,
            ..base.clone()
        },
        2,
    );
    for tile in [[12, 16], [16, 0], [256, 16], [4, 4]] {
        invalid(
            &Recipe {
                tile,
                ..base.clone()
            },
            2,
        );
    }
    for tile in [[8, 128], [64, 32]] {
        Recipe {
            tile,
            ..base.clone()
        }
        .validate(2)
        .expect("valid tile");
    }
}
