"""The Python module on the committed fixtures: metadata, dense tensors, zero-copy tile views
(rebuilt here into dense matrices independently of the library), checksums, errors, and sentence
embeddings compared with et-run's output on the same inputs."""

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import ets

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "fixtures" / "valid"
TILE_F32 = VALID / "tiny-bert-tile16x16-f32.ets"
TILE_ELEMENTS_BF16 = VALID / "tiny-bert-tile16x16-elements-bf16.ets"
DENSE_F32 = VALID / "tiny-bert-dense-f32.ets"
SENTENCES = ["hello world", "a second sentence", "", "the third one is a little longer"]


def et_run():
    """The et-run built from this checkout (ETS_RUN overrides); the test fails without it."""
    path = Path(os.environ.get("ETS_RUN", ROOT / "target" / "release" / "et-run"))
    assert path.is_file(), f"{path} not found: build it with `cargo build --release`"
    return path


def bits_to_f32(words, dtype):
    if dtype == "bf16":
        return (words.astype(np.uint32) << 16).view(np.float32)
    return words.astype(np.float32)


def dense_from_tiles(t):
    """A dense matrix from the stored parts, following the spec's tile encoding."""
    rows, cols = t.shape
    th, tw = t.tile_shape
    gr, gc = t.grid_shape
    values = bits_to_f32(t.values, t.dtype)
    out = np.zeros((gr * th, gc * tw), dtype=np.float32)
    kept = 0
    for br in range(gr):
        assert t.row_offsets[br] == kept
        for bc in range(gc):
            bit = br * gc + bc
            if (int(t.bitmap[bit // 64]) >> (bit % 64)) & 1 == 0:
                continue
            if t.element_bitmaps is None:
                block = values[kept * th * tw:(kept + 1) * th * tw]
            else:
                words = (th * tw + 63) // 64
                block = np.zeros(th * tw, dtype=np.float32)
                v = int(t.element_offsets[kept])
                for e in range(th * tw):
                    if (int(t.element_bitmaps[kept * words + e // 64]) >> (e % 64)) & 1:
                        block[e] = values[v]
                        v += 1
            out[br * th:(br + 1) * th, bc * tw:(bc + 1) * tw] = block.reshape(th, tw)
            kept += 1
    assert t.row_offsets[gr] == kept
    return out[:rows, :cols]


def test_metadata():
    f = ets.open(TILE_F32)
    assert f.config["hidden_size"] == 32 and f.config["num_layers"] == 2
    assert isinstance(f.recipe, dict)
    names = f.tensor_names()
    sections = [s["name"] for s in f.header["sections"] if s["kind"] == "tensor"]
    assert names == sections and "layers.0.attention.query.weight" in names
    assert f.tensor_info("embeddings.word_embeddings.weight") == ("f32", (50, 32), "dense")


def test_dense_tensor_is_the_stored_values():
    f = ets.open(DENSE_F32)
    name = "embeddings.word_embeddings.weight"
    w = f.tensor(name)
    assert w.dtype == np.float32 and w.shape == (50, 32)
    section = next(s for s in f.header["sections"] if s["name"] == name)
    part = next(p for p in section["parts"] if p["role"] == "values")
    raw = np.fromfile(DENSE_F32, dtype="<f4", count=50 * 32, offset=part["offset"])
    np.testing.assert_array_equal(w, raw.reshape(50, 32))


@pytest.mark.parametrize("path", [TILE_F32, TILE_ELEMENTS_BF16])
def test_tiles_are_zero_copy_views_that_rebuild_the_tensor(path):
    f = ets.open(path)
    tiled = [n for n in f.tensor_names() if f.tensor_info(n)[2].startswith("tile")]
    assert tiled, "the fixture has tile tensors"
    pruned = 0
    for name in tiled:
        t = f.tiles(name)
        for a in (t.bitmap, t.row_offsets, t.values):
            assert not a.flags.owndata and not a.flags.writeable
        assert (t.element_bitmaps is not None) == (path == TILE_ELEMENTS_BF16)
        dense = f.tensor(name)
        np.testing.assert_array_equal(dense_from_tiles(t), dense)
        pruned += np.count_nonzero(dense) < dense.size
    assert pruned > 0, "some tile tensor has dropped tiles or elements"


def test_tiles_of_a_dense_tensor_is_an_error():
    f = ets.open(TILE_F32)
    with pytest.raises(ets.EtsError, match="stored as dense, not in tiles"):
        f.tiles("embeddings.word_embeddings.weight")


def test_verify_finds_a_changed_value(tmp_path):
    ets.open(DENSE_F32).verify()
    copy = tmp_path / "changed.ets"
    shutil.copyfile(DENSE_F32, copy)
    f = ets.open(copy)
    section = next(s for s in f.header["sections"] if s["name"] == "embeddings.word_embeddings.weight")
    data = bytearray(copy.read_bytes())
    data[section["offset"] + 5] ^= 0x40
    copy.write_bytes(bytes(data))
    with pytest.raises(ets.EtsError, match="embeddings.word_embeddings.weight"):
        ets.open(copy).verify()


def test_errors_carry_the_library_messages(tmp_path):
    missing = tmp_path / "missing.ets"
    with pytest.raises(ets.EtsError, match=str(missing)):
        ets.open(missing)
    with pytest.raises(ets.EtsError, match="r02"):
        ets.open(ROOT / "fixtures" / "invalid" / "r02-magic-first-byte.ets")
    f = ets.open(TILE_F32)
    with pytest.raises(ets.EtsError, match="no.such"):
        f.tensor("no.such")
    with pytest.raises(ets.EtsError, match="unknown device"):
        ets.Encoder(TILE_F32, device="tpu")
    with pytest.raises(ets.EtsError, match="is missing from the file"):
        ets.Encoder(VALID / "tiny-example.ets", device="cpu")
    enc = ets.Encoder(TILE_F32, device="cpu")
    with pytest.raises(ets.EtsError, match="batch_size"):
        enc.encode(["x"], batch_size=0)
    with pytest.raises(TypeError):
        enc.encode("one string")


def run_et_run(tmp_path, path, options):
    npy = tmp_path / "out.npy"
    args = [str(et_run()), str(path), "--device", "cpu", "--npy", str(npy), *options]
    for s in SENTENCES:
        args += ["--text", s]
    run = subprocess.run(args, check=True, capture_output=True, text=True)
    prefix = "et-run: warning: "
    warned = [l[len(prefix):] for l in run.stderr.splitlines() if l.startswith(prefix)]
    return np.load(npy), warned


@pytest.mark.parametrize("path", [TILE_F32, TILE_ELEMENTS_BF16])
def test_encode_matches_et_run(tmp_path, path):
    want, _ = run_et_run(tmp_path, path, [])
    assert want.shape == (len(SENTENCES), 32) and np.abs(want).sum() > 0
    enc = ets.Encoder(path, device="cpu")
    assert enc.device == "cpu" and enc.hidden_size == 32
    got = enc.encode(SENTENCES)
    assert got.shape == (len(SENTENCES), 32) and got.dtype == np.float32
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(enc.encode(SENTENCES, batch_size=1), want, rtol=1e-5, atol=1e-6)


def test_auto_device_runs():
    enc = ets.Encoder(TILE_F32)
    assert enc.device in ("cpu", "cuda")
    if enc.device == "cpu":
        assert enc.fallback_reason
    assert enc.encode(["hello"]).shape == (1, 32)
    assert enc.settings == {"pooling": "mean", "normalize": False, "max_length": 16}


def test_overrides_match_et_run(tmp_path):
    options = ["--pooling", "cls", "--normalize", "--max-length", "4"]
    want, et_run_warnings = run_et_run(tmp_path, TILE_F32, options)
    enc = ets.Encoder(TILE_F32, device="cpu", pooling="cls", normalize=True, max_length=4)
    assert enc.settings == {"pooling": "cls", "normalize": True, "max_length": 4}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = enc.encode(SENTENCES)
    messages = [str(w.message) for w in seen]
    assert messages == et_run_warnings and any(m.startswith("input 4 ") for m in messages)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert not np.array_equal(got, ets.Encoder(TILE_F32, device="cpu").encode(SENTENCES))
    with pytest.raises(ets.EtsError, match="maximum length 17 must be 1 to 16"):
        ets.Encoder(TILE_F32, device="cpu", max_length=17)
    with pytest.raises(ets.EtsError, match="unknown pooling"):
        ets.Encoder(TILE_F32, device="cpu", pooling="max")


def test_one_encoder_serves_several_threads():
    # Before, the encoder was bound to the thread that made it; now threads share it (the GIL is
    # released while it runs) and each gets exactly the result a lone call gives.
    from concurrent.futures import ThreadPoolExecutor

    enc = ets.Encoder(TILE_F32, device="cpu")
    inputs = [[f"sentence {i} of thread {t}" for i in range(40)] + SENTENCES for t in range(6)]
    want = [enc.encode(texts) for texts in inputs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(enc.encode, inputs * 3))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % len(inputs)])
