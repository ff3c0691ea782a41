"""Recovery's numpy-only parts: masks read from pruned files (checked against an independent
reading of the spec's bitmaps), the zero check, names, sentences, the safetensors writer, and
the packing round trip `et-convert --method existing` of a written model (same tile grid)."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ets
from ets.recover import (RecoveryError, check_zeros, file_masks, read_safetensors,
                         read_sentences, source_names, write_model_dir, write_safetensors)
from ets.recover.files import _hf_candidates

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "fixtures" / "valid"


def et_convert():
    path = Path(os.environ.get("ETS_CONVERT", ROOT / "target" / "release" / "et-convert"))
    assert path.is_file(), f"{path} not found: build it with `cargo build --release`"
    return path


def bit(words, i):
    return (int(words[i // 64]) >> (i % 64)) & 1 == 1


def reference_mask(t):
    """The element mask of a tile tensor, bit by bit from the spec (no vectorised tricks)."""
    rows, cols = t.shape
    th, tw = t.tile_shape
    gr, gc = t.grid_shape
    out = np.zeros((gr * th, gc * tw), dtype=bool)
    kept = 0
    for br in range(gr):
        for bc in range(gc):
            if not bit(t.bitmap, br * gc + bc):
                continue
            for e in range(th * tw):
                words = (th * tw + 63) // 64
                on = t.element_bitmaps is None or bit(t.element_bitmaps, kept * words * 64 + e)
                out[br * th + e // tw, bc * tw + e % tw] = on
            kept += 1
    return out[:rows, :cols]


@pytest.mark.parametrize("fixture", ["tiny-bert-tile16x16-f32", "tiny-bert-tile16x32-f16",
                                     "tiny-bert-tile16x16-elements-f32",
                                     "tiny-bert-tile16x16-elements-bf16"])
def test_tile_masks_follow_the_bitmaps(fixture):
    f = ets.open(VALID / f"{fixture}.ets")
    masks = file_masks(f)
    tiled = [s["name"] for s in f.header["sections"]
             if s.get("kind") == "tensor" and s["encoding"]["kind"] == "tile"]
    assert sorted(masks) == sorted(tiled) and tiled
    for name in tiled:
        want = reference_mask(f.tiles(name))
        assert masks[name].dtype == bool
        assert np.array_equal(masks[name], want), name
        # Stored zeros are allowed inside the mask; nothing outside it is stored.
        assert not np.any(f.tensor(name)[~masks[name]])
        assert masks[name].any()
    assert any(not m.all() for m in masks.values())


@pytest.mark.parametrize("kind", ["rows", "cols"])
def test_row_and_column_masks(kind):
    f = ets.open(VALID / f"tiny-bert-{kind}-f32.ets")
    masks = file_masks(f)
    assert masks
    for name, mask in masks.items():
        w = f.tensor(name)
        lines = mask if kind == "rows" else mask.T
        # Whole lines kept or dropped, and a kept line is one with a stored nonzero value.
        assert all(line.all() or not line.any() for line in lines)
        nonzero_lines = np.any(w != 0, axis=1 if kind == "rows" else 0)
        assert np.array_equal(lines.any(axis=1), nonzero_lines), name


def test_dense_files_have_no_masks():
    assert file_masks(ets.open(VALID / "tiny-bert-dense-f32.ets")) == {}


def test_zero_check_names_each_broken_tensor():
    f = ets.open(VALID / "tiny-bert-tile16x16-f32.ets")
    masks = file_masks(f)
    tensors = {n: f.tensor(n).copy() for n in masks}
    check_zeros(tensors, masks)
    name = sorted(masks)[0]
    r, c = np.argwhere(~masks[name])[0]
    tensors[name][r, c] = 1e-30
    other = sorted(masks)[1]
    del tensors[other]
    with pytest.raises(RecoveryError) as e:
        check_zeros(tensors, masks)
    assert f"{name}: 1 nonzero values outside the mask" in str(e.value)
    assert f"{other}: missing" in str(e.value)


def test_names_map_to_hugging_face_checkpoints():
    f = ets.open(VALID / "tiny-bert-dense-f32.ets")
    canonical = f.tensor_names()
    hf = ["bert." + _hf_candidates(n)[-1] for n in canonical if _hf_candidates(n)]
    names = source_names(canonical, hf)
    assert names["layers.1.attention.query.weight"] == "encoder.layer.1.attention.self.query.weight"
    assert names["layers.0.ffn.layer_norm.weight"] == "encoder.layer.0.output.LayerNorm.gamma"
    assert names["embeddings.layer_norm.bias"] == "embeddings.LayerNorm.beta"
    assert "classifier.weight" not in names and len(names) == len(hf)
    with pytest.raises(RecoveryError, match="layers.1.ffn.output.bias"):
        source_names(canonical, [n for n in hf if "layer.1.output.dense.bias" not in n])


def test_sentences(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("label\ttext\n1\tfirst one\n0\t \n1\tsecond\n0\tthird\n")
    assert read_sentences(tsv) == ["first one", "second", "third"]
    assert read_sentences(tsv, skip=1, limit=1) == ["second"]
    plain = tmp_path / "p.txt"
    plain.write_text("a b\n\n c\n")
    assert read_sentences(plain) == ["a b", "c"]


def test_safetensors_round_trip_and_layout(tmp_path):
    tensors = {"b.w": np.arange(6, dtype=np.float64).reshape(2, 3) - 2.5,
               "a.ids": np.arange(5, dtype=np.int64).reshape(1, 5)}
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert header["b.w"]["dtype"] == "F32" and header["a.ids"]["dtype"] == "I64"
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == len(data) - 8 - n
    back = read_safetensors(path)
    assert back["b.w"].dtype == np.float32 and np.array_equal(back["b.w"], tensors["b.w"])
    assert np.array_equal(back["a.ids"], tensors["a.ids"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def hf_config(cfg):
    return {"architectures": ["BertModel"], "model_type": "bert",
            "hidden_size": cfg["hidden_size"], "num_hidden_layers": cfg["num_layers"],
            "num_attention_heads": cfg["num_heads"], "intermediate_size": cfg["intermediate_size"],
            "vocab_size": cfg["vocab_size"], "hidden_act": cfg["activation"],
            "max_position_embeddings": cfg["max_position_embeddings"],
            "type_vocab_size": cfg["type_vocab_size"], "layer_norm_eps": cfg["layer_norm_eps"]}


def model_dir_from(f, directory):
    """A Hugging Face folder (config.json, vocab.txt) holding a file's tensors."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(hf_config(f.config)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(f.config["vocab_size"] - len(vocab))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return {_hf_candidates(n)[0]: f.tensor(n) for n in f.tensor_names() if _hf_candidates(n)}


def kept_tiles(f, tile):
    """Per weight, the set of kept (block row, block column) of a tile grid; a dense weight
    keeps every tile that holds a nonzero value."""
    out = {}
    for name in f.tensor_names():
        if not name.startswith("layers.") or not name.endswith("weight"):
            continue
        _, shape, encoding = f.tensor_info(name)
        if len(shape) != 2:
            continue
        if encoding.startswith("tile"):
            t = f.tiles(name)
            gr, gc = t.grid_shape
            out[name] = {(i // gc, i % gc) for i in range(gr * gc) if bit(t.bitmap, i)}
        else:
            w = f.tensor(name)
            th, tw = tile
            out[name] = {(r // th, c // tw) for r, c in np.argwhere(w != 0)}
    return out


def test_written_model_repacks_into_the_same_grid(tmp_path):
    src = ets.open(VALID / "tiny-bert-tile16x16-f32.ets")
    masks = file_masks(src)
    tensors = model_dir_from(src, tmp_path / "src")
    hf_masks = {_hf_candidates(n)[0]: m for n, m in masks.items()}
    # Training changes the kept values; the writer refuses a value outside the masks.
    rng = np.random.default_rng(0)
    for name, m in hf_masks.items():
        tensors[name] = np.where(m, tensors[name] + rng.normal(0, 1e-3, m.shape), 0.0)
    broken = dict(tensors)
    name = next(n for n in sorted(hf_masks) if not hf_masks[n].all())
    broken[name] = tensors[name] + 1e-3
    with pytest.raises(RecoveryError, match=name):
        write_model_dir(tmp_path / "bad", tmp_path / "src", broken, hf_masks)
    assert not (tmp_path / "bad" / "model.safetensors").exists()

    path = write_model_dir(tmp_path / "out", tmp_path / "src", tensors, hf_masks)
    assert (tmp_path / "out" / "config.json").is_file()
    assert (tmp_path / "out" / "vocab.txt").is_file()
    packed = tmp_path / "packed.ets"
    subprocess.run([str(et_convert()), str(path), str(packed), "--method", "existing",
                    "--tile", "16x16", "--dtype", "f32", "--quiet"], check=True)
    got = ets.open(packed)
    assert kept_tiles(got, (16, 16)) == kept_tiles(src, (16, 16))
    for n, m in masks.items():
        w = got.tensor(n)
        assert np.array_equal(w, tensors[_hf_candidates(n)[0]].astype(np.float32))
        assert not np.any(w[~m])


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from ets.recover.train import Settings, distill

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RecoveryError, match="pip install torch transformers"):
        distill(tmp_path, VALID / "tiny-bert-tile16x16-f32.ets", tmp_path / "t.tsv",
                tmp_path / "out", Settings())
    assert not (tmp_path / "out").exists()


def test_kept_tiles_agree_with_the_bitmaps():
    from ets.recover import kept_tiles as library_kept, same_tiles

    tiles = ets.open(VALID / "tiny-bert-tile16x16-f32.ets")
    dense = ets.open(VALID / "tiny-bert-dense-f32.ets")
    got = library_kept(tiles, (16, 16))
    want = kept_tiles(tiles, (16, 16))
    assert sorted(got) == sorted(want)
    for name, grid in got.items():
        assert {tuple(i) for i in np.argwhere(grid)} == want[name]
    assert same_tiles(tiles, tiles, (16, 16)) == []
    assert same_tiles(tiles, dense, (16, 16)) == sorted(n for n in got if not got[n].all())
    with pytest.raises(RecoveryError, match="not"):
        library_kept(tiles, (32, 32))


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from ets.recover.__main__ import main

    missing = tmp_path / "missing.ets"
    assert main([str(tmp_path), str(missing), str(tmp_path / "t.tsv"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ets.recover: error: ") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(missing), "t.tsv", "o", "--steps", "0"])
