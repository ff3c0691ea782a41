//! Property test: any matrix, in any encoding and dtype, with any mask, written and read back,
//! densifies to the masked input rounded to the dtype; the tile views agree with the mask.

use ets::format::{
    Dtype, EncodedTensor, EtsFile, EtsWriter, ModelConfig, Provenance, TensorData, WriteOptions,
};
use proptest::prelude::*;

fn config() -> ModelConfig {
    ets_testkit::conformance::model::tiny_example_config()
}

/// Round to nearest even into bfloat16, written from the definition (not through `half`).
fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

fn round(dtype: Dtype, x: f32) -> f32 {
    match dtype {
        Dtype::F32 => x,
        Dtype::F16 => half::f16::from_f32(x).to_f32(),
        Dtype::Bf16 => round_bf16(x),
    }
}

#[derive(Debug, Clone)]
enum Enc {
    Dense,
    Tile(usize, usize),
    TileElements(usize, usize),
    Rows,
    Cols,
}

fn edge() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![8usize, 16, 32, 64, 128])
}

fn encoding() -> impl Strategy<Value = Enc> {
    prop_oneof![
        Just(Enc::Dense),
        (edge(), edge()).prop_map(|(h, w)| Enc::Tile(h, w)),
        (edge(), edge()).prop_map(|(h, w)| Enc::TileElements(h, w)),
        Just(Enc::Rows),
        Just(Enc::Cols),
    ]
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::Bf16])
}

/// Finite values over a wide range, so f16 overflow, subnormals and exact zeros all occur.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        -2.0f32..2.0,
        -1.0e5f32..1.0e5,
        prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
    ]
}

#[derive(Debug)]
struct Case {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    enc: Enc,
    dtype: Dtype,
    /// Per-element keep mask implied by the encoding's mask.
    keep: Vec<bool>,
    encoded: EncodedTensor,
}

fn build(
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    enc: Enc,
    dtype: Dtype,
    bits: Vec<bool>,
) -> Case {
    let bit = |i: usize| bits[i % bits.len()];
    let (keep, encoded) = match enc {
        Enc::Dense => (
            vec![true; rows * cols],
            EncodedTensor::dense(vec![rows as u64, cols as u64], dtype, &data),
        ),
        Enc::Tile(h, w) => {
            let gc = cols.div_ceil(w);
            let mask: Vec<bool> = (0..rows.div_ceil(h) * gc).map(bit).collect();
            let keep = (0..rows * cols)
                .map(|i| mask[(i / cols / h) * gc + (i % cols) / w])
                .collect();
            (
                keep,
                EncodedTensor::tile(rows, cols, &data, h, w, &mask, dtype),
            )
        }
        Enc::TileElements(h, w) => {
            let keep: Vec<bool> = (0..rows * cols).map(bit).collect();
            let e = EncodedTensor::tile_elements(rows, cols, &data, h, w, &keep, dtype);
            (keep, e)
        }
        Enc::Rows | Enc::Cols => {
            let by_rows = matches!(enc, Enc::Rows);
            let n = if by_rows { rows } else { cols };
            let mut kept: Vec<u32> = (0..n as u32).filter(|&i| bit(i as usize)).collect();
            if kept.is_empty() {
                kept.push((n / 2) as u32);
            }
            let keep = (0..rows * cols)
                .map(|i| kept.contains(&((if by_rows { i / cols } else { i % cols }) as u32)))
                .collect();
            let e = if by_rows {
                EncodedTensor::rows(rows, cols, &data, &kept, dtype)
            } else {
                EncodedTensor::cols(rows, cols, &data, &kept, dtype)
            };
            (keep, e)
        }
    };
    Case {
        rows,
        cols,
        data,
        enc,
        dtype,
        keep,
        encoded: encoded.unwrap(),
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..80, 1usize..80, encoding(), dtype()).prop_flat_map(|(rows, cols, enc, dtype)| {
        let n = rows * cols;
        (
            prop::collection::vec(value(), n),
            prop::collection::vec(prop::bool::weighted(0.4), 1..=n.max(2)),
        )
            .prop_map(move |(data, bits)| build(rows, cols, data, enc.clone(), dtype, bits))
    })
}

fn check_tile_view(c: &Case, data: &TensorData<'_>, expected: &[f32]) {
    let TensorData::Tile(v) = data else {
        return;
    };
    let (th, tw) = (v.tile_rows, v.tile_cols);
    let mut tile = vec![0f32; th * tw];
    let mut kept = 0;
    for br in 0..v.grid_rows {
        assert_eq!(v.row_offsets[br] as usize, kept, "row_offsets[{br}]");
        for bc in 0..v.grid_cols {
            let inside = |i: usize, j: usize| br * th + i < c.rows && bc * tw + j < c.cols;
            let any = (0..th).any(|i| {
                (0..tw).any(|j| inside(i, j) && c.keep[(br * th + i) * c.cols + bc * tw + j])
            });
            let listed = v.row_tiles(br).find(|&(_, col)| col == bc);
            assert_eq!(listed.is_some(), any, "tile ({br}, {bc}) presence");
            let Some((k, _)) = listed else { continue };
            assert_eq!(k, kept, "kept index of tile ({br}, {bc})");
            kept += 1;
            v.tile_f32(k, &mut tile);
            for i in 0..th {
                for j in 0..tw {
                    let want = if inside(i, j) {
                        expected[(br * th + i) * c.cols + bc * tw + j]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        tile[i * tw + j],
                        want,
                        "tile ({br}, {bc}) element ({i}, {j})"
                    );
                }
            }
        }
    }
    assert_eq!(v.kept_tiles(), kept);
    assert_eq!(v.values_offset % 256, 0, "values part is aligned");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn every_encoding_and_dtype_round_trips(c in case()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ets");
        let mut w = EtsWriter::create(&path, WriteOptions::default()).unwrap();
        w.add_tensor("t", &c.encoded).unwrap();
        w.finish(config(), serde_json::json!({}), Provenance::default()).unwrap();
        let f = EtsFile::open(&path).unwrap();
        f.verify_checksums().unwrap();
        let t = f.tensor("t").unwrap();
        prop_assert_eq!(t.dtype, c.dtype);
        prop_assert_eq!(t.shape, &[c.rows as u64, c.cols as u64][..]);
        let expected: Vec<f32> = c
            .data
            .iter()
            .zip(&c.keep)
            .map(|(&x, &k)| if k { round(c.dtype, x) } else { 0.0 })
            .collect();
        let dense = t.to_dense_f32();
        prop_assert_eq!(dense.len(), expected.len());
        for (i, (a, b)) in dense.iter().zip(&expected).enumerate() {
            prop_assert!(a == b, "{:?} {:?}: element {} is {} expected {}", c.enc, c.dtype, i, a, b);
        }
        check_tile_view(&c, &t.data, &expected);
        let again = EtsFile::from_bytes(f.bytes()).unwrap();
        prop_assert_eq!(again.tensor("t").unwrap().to_dense_f32(), dense);
    }
}

#[test]
fn bf16_reference_rounds_to_nearest_even() {
    // 1 + 2^-8 lies halfway between two bf16 values and rounds to the even one (1.0).
    assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    let stored = ets::format::tiles::encode_f32(Dtype::Bf16, &[1.0 + 3.0 / 256.0]);
    assert_eq!(
        ets::format::tiles::decode_f32(Dtype::Bf16, &stored),
        vec![1.0 + 4.0 / 256.0]
    );
}
