"""Recovery end to end on a tiny random BERT: prune with et-convert, distil a few steps, check
the zeros are exact, the probe loss went down, the run is deterministic, and the written model
repacks with `--method existing` into the pruned file's tile grid. Skipped (not passed) when
PyTorch or transformers is missing: `pip install torch transformers` into the test environment
to run it."""

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ets  # noqa: E402
from ets.recover import file_masks, read_safetensors  # noqa: E402
from ets.recover.train import Settings, distill  # noqa: E402
from test_recover import et_convert, kept_tiles  # noqa: E402

WORDS = [f"w{i}" for i in range(59)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random BertModel folder, sentences, and a 50%-pruned, calibrated .ets of it."""
    d = tmp_path_factory.mktemp("tiny")
    src = d / "src"
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=64)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(
        src, safe_serialization=True)
    (src / "vocab.txt").write_text("\n".join(vocab) + "\n")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(4, 20))) for _ in range(400)]
    train = d / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{l}\t0\n" for l in lines))
    pruned = d / "pruned.ets"
    subprocess.run([str(et_convert()), str(src / "model.safetensors"), str(pruned),
                    "--sparsity", "0.5", "--tile", "16x16", "--calibrate", str(train),
                    "--dtype", "f32", "--quiet"], check=True)
    return d, src, train, pruned


def run(tiny, name, seed=0):
    d, src, train, pruned = tiny
    settings = Settings(steps=40, batch_size=16, lr=1e-3, device="cpu", seed=seed, skip=100,
                        log_every=10)
    return distill(src, pruned, train, d / name, settings)


def test_recovery_keeps_the_masks_and_lowers_the_loss(tiny):
    d, src, _, pruned = tiny
    report = run(tiny, "out")
    assert report["probe_loss_after"] < 0.8 * report["probe_loss_before"], report
    f = ets.open(pruned)
    masks = file_masks(f)
    assert masks and any(not m.all() for m in masks.values())
    out = read_safetensors(d / "out" / "model.safetensors")
    source = read_safetensors(src / "model.safetensors")
    assert sorted(out) == sorted(source)
    layer_names = {"layers.0.attention.query.weight": "encoder.layer.0.attention.self.query.weight",
                   "layers.1.ffn.output.weight": "encoder.layer.1.output.dense.weight"}
    for canonical, hf in layer_names.items():
        w, m = out[hf], masks[canonical]
        assert w.dtype == np.float32 and not np.any(w[~m]) and np.all(np.signbit(w[~m]) == 0)
        # Training moved the kept weights away from the pruned file's starting point.
        assert not np.allclose(w[m], f.tensor(canonical)[m])
    # Embeddings do not train: they stay the source's.
    name = "embeddings.word_embeddings.weight"
    assert np.array_equal(out[name], source[name])
    for copied in ("config.json", "vocab.txt"):
        assert (d / "out" / copied).read_bytes() == (src / copied).read_bytes()


def test_recovery_is_deterministic_for_a_seed(tiny):
    d = tiny[0]
    if not (d / "out").exists():
        run(tiny, "out")
    run(tiny, "again")
    assert (d / "again" / "model.safetensors").read_bytes() == \
        (d / "out" / "model.safetensors").read_bytes()


def test_recovered_model_repacks_into_the_pruned_grid(tiny):
    d, _, _, pruned = tiny
    if not (d / "out").exists():
        run(tiny, "out")
    packed = d / "packed.ets"
    subprocess.run([str(et_convert()), str(d / "out" / "model.safetensors"), str(packed),
                    "--method", "existing", "--tile", "16x16", "--quiet"], check=True)
    want, got = kept_tiles(ets.open(pruned), (16, 16)), kept_tiles(ets.open(packed), (16, 16))
    assert want and got == want
    recipe = ets.open(packed).recipe
    assert json.dumps(recipe).find("existing") >= 0
