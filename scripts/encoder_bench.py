#!/usr/bin/env python3
"""The PyTorch side of scripts/encoder_bench.sh.

  encoder_bench.py make DIR            a BERT-base-shaped BertModel, random init, saved as
                                       DIR/model.safetensors + DIR/config.json
  encoder_bench.py torch DIR SIZES     times it in fp16 with SDPA attention: eager, CUDA graph
                                       replay and torch.compile (mode COMPILE_MODE, default
                                       max-autotune; sizes compiled until COMPILE_BUDGET seconds,
                                       default 300, are spent; 0 turns it off), and
                                       scaled_dot_product_attention alone (JSON lines)
  encoder_bench.py st MODEL_DIR TSV     sentence-transformers' encode (fp16, batch 32) on the
                                       sentences of an SST-2 style TSV, sentences per second
  encoder_bench.py table RESULTS       the table of ratios from the JSON lines of both sides

SIZES is a comma-separated list of BxL (B sequences of L tokens) or BxL1-L2 (B sequences of
lengths L1 + (37 i) mod (L2 - L1 + 1), padded with an attention mask on the PyTorch side). Times
are CUDA-event milliseconds per forward pass after a warm-up.
"""
import json
import os
import sys
import time


def lengths(size):
    b, l = size.split("x")
    b = int(b)
    if "-" in l:
        lo, hi = (int(v) for v in l.split("-"))
        return [lo + (37 * i) % (hi - lo + 1) for i in range(b)]
    return [int(l)] * b


def sizes(text):
    return [(s, lengths(s)) for s in text.split(",")]


def make(out):
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)


def cuda_ms(fn, iters, warmup=5):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def graphed(model, ids, mask):
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(input_ids=ids, attention_mask=mask)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(input_ids=ids, attention_mask=mask)
    return graph


def compiled_ms(model, ids, mask, budget):
    """torch.compile'd forward time and the seconds its compilation took (inf when skipped)."""
    import torch

    if budget["left"] <= 0:
        return float("inf"), 0.0
    t = time.perf_counter()
    try:
        torch._dynamo.reset()
        fn = torch.compile(model, mode=os.environ.get("COMPILE_MODE", "max-autotune"), dynamic=False)
        fn(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        spent = time.perf_counter() - t
        return cuda_ms(lambda: fn(input_ids=ids, attention_mask=mask), 50), spent
    except Exception as e:  # a compile the installed stack does not allow
        print(f"torch.compile failed: {e}", file=sys.stderr)
        return float("inf"), time.perf_counter() - t


def bench_torch(model_dir, size_list, attention_sizes):
    import torch
    import torch.nn.functional as F
    from transformers import BertModel

    model = BertModel.from_pretrained(model_dir, attn_implementation="sdpa")
    model = model.half().cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(7)
    budget = {"left": float(os.environ.get("COMPILE_BUDGET", "300"))}
    with torch.inference_mode():
        for size, lens in sizes(size_list):
            b, l = len(lens), max(lens)
            ids = torch.randint(0, 30522, (b, l), device="cuda", generator=gen)
            mask = (torch.arange(l, device="cuda")[None, :] < torch.tensor(lens, device="cuda")[:, None]).long()
            eager = cuda_ms(lambda: model(input_ids=ids, attention_mask=mask), 30)
            try:
                replay = cuda_ms(graphed(model, ids.clone(), mask.clone()).replay, 50)
            except RuntimeError as e:  # a capture the installed transformers does not allow
                print(f"CUDA graph capture failed at {size}: {e}", file=sys.stderr)
                replay = float("inf")
            compiled = compiled_ms(model, ids, mask, budget)
            budget["left"] -= compiled[1]
            print(json.dumps({"kind": "torch", "size": size, "eager": eager, "graph": replay,
                              "compile": compiled[0], "compile_s": compiled[1]}))
        for size, lens in sizes(attention_sizes):
            if len(set(lens)) > 1:
                continue
            b, l = len(lens), lens[0]
            q, k, v = (torch.randn(b, 12, l, 64, device="cuda", dtype=torch.float16) for _ in range(3))
            ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v), 100)
            print(json.dumps({"kind": "sdpa", "size": size, "ms": ms}))
        sys.stdout.flush()


def bench_st(model_dir, tsv):
    import time

    import torch
    from sentence_transformers import SentenceTransformer

    lines = [l.rstrip("\n").split("\t")[0] for l in open(tsv, encoding="utf-8")][1:]
    texts = [t.strip() for t in lines if t.strip()]
    model = SentenceTransformer(model_dir, device="cuda")
    model.half()
    model.encode(texts[:64], batch_size=32)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.encode(texts, batch_size=32, convert_to_numpy=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"kind": "st", "sentences": len(texts), "per_s": len(texts) / best}))


def table(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    ours = {}
    files = []
    for r in rows:
        if r["kind"] == "encoder":
            f = r["model"].split("/")[-1].removesuffix(".ets")
            files += [f] if f not in files else []
            ours.setdefault(r["size"], {})[f] = r["ms"]
    torch_t = {r["size"]: r for r in rows if r["kind"] == "torch"}
    print("\nBERT-base (12 layers, 768, f16), ms per forward; x = PyTorch best / ours (inf: not run)")
    print(f"{'size':>10} {'eager':>7} {'graph':>7} {'compile':>7}" + "".join(f" {f:>14}" for f in files))
    for size, t in torch_t.items():
        comp = t.get("compile", float("inf"))
        best = min(t["eager"], t["graph"], comp)
        cells = ""
        for f in files:
            ms = ours.get(size, {}).get(f, float("nan"))
            cells += f" {ms:>7.3f} {best / ms:>5.2f}x"
        print(f"{size:>10} {t['eager']:>7.3f} {t['graph']:>7.3f} {comp:>7.3f}{cells}")
    sdpa = {r["size"]: r["ms"] for r in rows if r["kind"] == "sdpa"}
    att = {r["size"]: r["ms"] for r in rows if r["kind"] == "attention"}
    print("\nAttention alone (12 heads, head dim 64, f16), ms; x = SDPA / ours")
    print(f"{'size':>10} {'sdpa':>8} {'ets':>8} {'x':>6}")
    for size, ms in sdpa.items():
        o = att.get(size, float("nan"))
        print(f"{size:>10} {ms:>8.4f} {o:>8.4f} {ms / o:>5.2f}x")
    st = [r for r in rows if r["kind"] == "st"]
    run = [r for r in rows if r["kind"] == "et-run"]
    if st or run:
        print("\nSST-2 dev, all-MiniLM-L6-v2, sentences/s (tokenization included); x = ours / ST")
        ref = st[0]["per_s"] if st else float("nan")
        print(f"{'sentence-transformers fp16 b32':>34} {ref:>9.1f}")
        for r in run:
            print(f"{'et-run cuda ' + r['model']:>34} {r['per_s']:>9.1f} {r['per_s'] / ref:>5.2f}x")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "torch":
        bench_torch(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "st":
        bench_st(sys.argv[2], sys.argv[3])
    elif cmd == "table":
        table(sys.argv[2])
    else:
        sys.exit(__doc__)
