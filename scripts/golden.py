#!/usr/bin/env python3
"""Reference sentence embeddings for the CPU runtime tests (fixtures/golden/).

Run once at development time from the repository root, after scripts/fetch_models.sh and
scripts/setup_python.sh:

    python3 scripts/golden.py [--count 60]

For each model it writes fixtures/golden/<name>/:
    tokens.json  sentences, token ids and token-type ids (from the `tokenizers` package and the
                 model's tokenizer.json, padding and truncation off), and how the numbers were made
    mean.npy     [count, hidden] f32, mean over each sentence's real tokens of the last hidden state
    cls.npy      [count, hidden] f32, the last hidden state of the first token ([CLS])

References (none of them uses this project's Rust code):
    all-minilm-l6-v2      numpy BERT in float64 written from the Hugging Face BertModel formulas,
                          reading model.safetensors directly (see bert_numpy below)
    paraphrase-minilm-l3  onnxruntime (CPU) on the published ONNX graph
    minilm-int8           onnxruntime (CPU) on the published int8 ONNX graph
    maskseq               onnxruntime (CPU) on the fixed-shape [1, 64] ONNX graph
    synth-<name>          onnxruntime (CPU) on fixtures/sources/<name>/model.onnx, or the numpy
                          BERT for a safetensors fixture, when fixtures/sources/ is present
"""

import argparse
import csv
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("ETS_MODELS_DIR", os.path.join(ROOT, "models"))
OUT = os.path.join(ROOT, "fixtures", "golden")
SST2 = os.path.join(ROOT, "..", "shared", "data", "sst2", "dev.tsv")


def sentences(count):
    with open(SST2, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows[0][0] != "text":
        sys.exit(f"{SST2}: expected a header `text<TAB>label`")
    return [r[0].strip() for r in rows[1 : count + 1]]


def tokenize(tokenizer_json, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(t) for t in texts]
    return [e.ids for e in encs], [e.type_ids for e in encs]


def save(name, texts, ids, type_ids, mean, cls, how):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    meta = {
        "reference": how,
        "count": len(texts),
        "hidden_size": int(mean.shape[1]),
        "sentences": texts,
        "ids": [list(map(int, x)) for x in ids],
        "type_ids": [list(map(int, x)) for x in type_ids],
    }
    with open(os.path.join(d, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    np.save(os.path.join(d, "mean.npy"), mean.astype("<f4"))
    np.save(os.path.join(d, "cls.npy"), cls.astype("<f4"))
    print(f"{name}: {len(texts)} sentences, hidden {mean.shape[1]} -> {d}")


# ---------------------------------------------------------------- numpy BERT (float64)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_erf(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def bert_numpy(weights, config, ids, type_ids):
    """One sequence through BertModel (eval mode): returns the last hidden state [len, hidden]."""
    W = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype != np.int64}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    hd = hidden // heads
    n = len(ids)
    x = (
        W["embeddings.word_embeddings.weight"][ids]
        + W["embeddings.position_embeddings.weight"][np.arange(n)]
        + W["embeddings.token_type_embeddings.weight"][type_ids]
    )
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda v, name: v @ W[p + name + ".weight"].T + W[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, hidden)
        a = lin(ctx, "attention.output.dense")
        x = layer_norm(a + x, W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"], eps)
        f = gelu_erf(lin(x, "intermediate.dense"))
        f = lin(f, "output.dense")
        x = layer_norm(f + x, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    return x


def golden_minilm_l6(texts):
    from safetensors.numpy import load_file

    d = os.path.join(MODELS, "all-minilm-l6-v2")
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        print("all-minilm-l6-v2: not in models/, skipped (run scripts/fetch_models.sh)")
        return
    weights = load_file(os.path.join(d, "model.safetensors"))
    weights = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in weights.items()}
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    ids, types = tokenize(os.path.join(d, "tokenizer.json"), texts)
    mean, cls = [], []
    for i, t in zip(ids, types):
        h = bert_numpy(weights, config, np.array(i), np.array(t))
        mean.append(h.mean(0))
        cls.append(h[0])
    save("all-minilm-l6-v2", texts, ids, types, np.array(mean), np.array(cls),
         "numpy float64 BERT from the Hugging Face BertModel formulas (scripts/golden.py), "
         "weights read from model.safetensors; tokens from tokenizer.json")


# ---------------------------------------------------------------- onnxruntime


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def shared_tokenizer():
    """paraphrase-MiniLM-L3-v2 and all-MiniLM-L6-v2 share the uncased BERT vocabulary."""
    for p in ("all-minilm-l6-v2/tokenizer.json", "maskseq/tokenizer.json"):
        if os.path.exists(os.path.join(MODELS, p)):
            return os.path.join(MODELS, p)
    return None


def run_hidden(sess, ids, types, feeds_for):
    """Last hidden state per sentence (batch of one, no padding unless the graph adds it)."""
    out = []
    for i, t in zip(ids, types):
        out.append(feeds_for(sess, np.array([i], dtype=np.int64), np.array([t], dtype=np.int64)))
    return out


def golden_onnx(name, path, texts, feeds_for, how):
    tj = shared_tokenizer()
    if not os.path.exists(path) or tj is None:
        print(f"{name}: model or tokenizer not in models/, skipped")
        return
    sess = session(path)
    ids, types = tokenize(tj, texts)
    hs = run_hidden(sess, ids, types, feeds_for)
    mean = np.array([h.astype(np.float64).mean(0) for h in hs])
    cls = np.array([h[0] for h in hs])
    save(name, texts, ids, types, mean, cls, how)


def feeds_l3(sess, ids, types):
    # The graph pads to 128 itself and returns (ids, mask, hidden [1,128,384], mean [1,384]).
    outs = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    n = ids.shape[1]
    hidden, pooled = outs[2][0, :n], outs[3][0]
    # The graph's own masked mean must agree with ours (guards against reading the wrong output).
    if not np.allclose(hidden.astype(np.float64).mean(0), pooled, atol=1e-5):
        sys.exit("paraphrase-minilm-l3-v2: the graph's pooled output is not the masked mean")
    return hidden


def feeds_int8(sess, ids, types):
    return sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                           "token_type_ids": types})[0][0]


def feeds_maskseq(sess, ids, types):
    n = ids.shape[1]
    padded = np.zeros((1, 64), dtype=np.int64)
    padded[0, :n] = ids[0]
    mask = np.zeros((1, 1, 1, 64), dtype=np.float32)
    mask[..., n:] = np.finfo(np.float32).min
    return sess.run(None, {"input_ids": padded, "attention_mask": mask})[0][0, :n]


def golden_synth(count):
    """Tiny synthetic fixtures (fixtures/sources/<name>/): random token ids, batch of one."""
    src = os.path.join(ROOT, "fixtures", "sources")
    dirs = sorted(os.listdir(src)) if os.path.isdir(src) else []
    if not dirs:
        print("synth: fixtures/sources/ not present, skipped")
        return
    rng = np.random.default_rng(20240601)
    for name in dirs:
        d = os.path.join(src, name)
        onnx_path = os.path.join(d, "model.onnx")
        st_path = os.path.join(d, "model.safetensors")
        if os.path.exists(onnx_path):
            sess = session(onnx_path)
            names = [i.name for i in sess.get_inputs()]

            def hidden(seq, sess=sess, names=names):
                feeds = {"input_ids": np.array([seq], dtype=np.int64)}
                if "attention_mask" in names:
                    feeds["attention_mask"] = np.ones((1, len(seq)), dtype=np.int64)
                if "token_type_ids" in names:
                    feeds["token_type_ids"] = np.zeros((1, len(seq)), dtype=np.int64)
                return sess.run(None, feeds)[0][0]

            how = f"onnxruntime CPU on fixtures/sources/{name}/model.onnx, first output"
        elif os.path.exists(st_path):
            from safetensors.numpy import load_file

            weights = load_file(st_path)
            weights = {k[5:] if k.startswith("bert.") else k: v for k, v in weights.items()}
            with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
                config = json.load(f)

            def hidden(seq, weights=weights, config=config):
                return bert_numpy(weights, config, np.array(seq), np.zeros(len(seq), dtype=int))

            how = f"numpy float64 BERT (scripts/golden.py) on fixtures/sources/{name}"
        else:
            continue
        with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
            vocab = sum(1 for _ in f)
        texts, ids, types, mean, cls = [], [], [], [], []
        for k in range(min(count, 8)):
            n = int(rng.integers(2, 20))
            seq = rng.integers(1, vocab, size=n).tolist()
            h = hidden(seq)
            texts.append(f"random ids {k}")
            ids.append(seq)
            types.append([0] * n)
            mean.append(h.astype(np.float64).mean(0))
            cls.append(h[0])
        save("synth-" + name, texts, ids, types, np.array(mean), np.array(cls),
             how + "; random token ids (no text)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=60, help="SST-2 dev sentences (default 60)")
    args = ap.parse_args()
    texts = sentences(args.count)
    golden_minilm_l6(texts)
    golden_onnx("paraphrase-minilm-l3-v2",
                os.path.join(MODELS, "paraphrase-minilm-l3-v2", "model.onnx"), texts, feeds_l3,
                "onnxruntime CPU (graph optimizations off) on the published ONNX graph; "
                "tokens from all-MiniLM-L6-v2's tokenizer.json (same uncased vocabulary)")
    golden_onnx("minilm-int8", os.path.join(MODELS, "minilm-int8", "model.onnx"), texts,
                feeds_int8,
                "onnxruntime CPU (graph optimizations off) on the published int8 ONNX graph; "
                "tokens from all-MiniLM-L6-v2's tokenizer.json")
    golden_onnx("maskseq", os.path.join(MODELS, "maskseq", "maskseq.onnx"), texts, feeds_maskseq,
                "onnxruntime CPU (graph optimizations off) on maskseq.onnx, each sentence padded "
                "to 64 with an additive float mask; padding rows dropped before pooling")
    golden_synth(args.count)


if __name__ == "__main__":
    main()
