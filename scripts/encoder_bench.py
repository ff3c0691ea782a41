#!/usr/bin/env python3
"""The PyTorch side of scripts/encoder_bench.sh.

  encoder_bench.py make DIR            a BERT-base-shaped BertModel, random init, saved as
                                       DIR/model.safetensors + DIR/config.json
  encoder_bench.py torch DIR SIZES     times it in fp16 with SDPA attention: eager and CUDA graph
                                       replay, and scaled_dot_product_attention alone (JSON lines)
  encoder_bench.py table RESULTS       the table of ratios from the JSON lines of both sides

SIZES is a comma-separated list of BxL (B sequences of L tokens). Times are CUDA-event
milliseconds per forward pass after a warm-up.
"""
import json
import sys


def sizes(text):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


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


def graphed(model, static):
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(input_ids=static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(input_ids=static)
    return graph


def bench_torch(model_dir, size_list, attention_sizes):
    import torch
    import torch.nn.functional as F
    from transformers import BertModel

    model = BertModel.from_pretrained(model_dir, attn_implementation="sdpa")
    model = model.half().cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(7)
    with torch.inference_mode():
        for b, l in sizes(size_list):
            ids = torch.randint(0, 30522, (b, l), device="cuda", generator=gen)
            eager = cuda_ms(lambda: model(input_ids=ids), 30)
            try:
                replay = cuda_ms(graphed(model, ids.clone()).replay, 50)
            except RuntimeError as e:  # a capture the installed transformers does not allow
                print(f"CUDA graph capture failed at {b}x{l}: {e}", file=sys.stderr)
                replay = float("inf")
            print(json.dumps({"kind": "torch", "size": f"{b}x{l}", "eager": eager, "graph": replay}))
        for b, l in sizes(attention_sizes):
            q, k, v = (torch.randn(b, 12, l, 64, device="cuda", dtype=torch.float16) for _ in range(3))
            ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v), 100)
            print(json.dumps({"kind": "sdpa", "size": f"{b}x{l}", "ms": ms}))
        sys.stdout.flush()


def table(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    ours = {}
    for r in rows:
        if r["kind"] == "encoder":
            ours.setdefault(r["size"], {})[r["model"].split("/")[-1]] = r["ms"]
    torch_t = {r["size"]: r for r in rows if r["kind"] == "torch"}
    print("\nBERT-base (12 layers, 768, f16), ms per forward; ratio = PyTorch best / ours")
    print(f"{'size':>7} {'torch eager':>11} {'torch graph':>11} {'ets dense':>9} {'ratio':>6} {'ets tile80':>10} {'ratio':>6}")
    for size, t in torch_t.items():
        best = min(t["eager"], t["graph"])
        d = ours.get(size, {}).get("dense.ets", float("nan"))
        s = ours.get(size, {}).get("tile80.ets", float("nan"))
        print(f"{size:>7} {t['eager']:>11.3f} {t['graph']:>11.3f} {d:>9.3f} {best / d:>5.2f}x {s:>10.3f} {best / s:>5.2f}x")
    sdpa = {r["size"]: r["ms"] for r in rows if r["kind"] == "sdpa"}
    att = {r["size"]: r["ms"] for r in rows if r["kind"] == "attention"}
    print("\nAttention alone (12 heads, head dim 64, f16), ms; ratio = SDPA / ours")
    print(f"{'size':>7} {'sdpa':>8} {'ets':>8} {'ratio':>6}")
    for size, ms in sdpa.items():
        o = att.get(size, float("nan"))
        print(f"{size:>7} {ms:>8.4f} {o:>8.4f} {ms / o:>5.2f}x")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "torch":
        bench_torch(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "table":
        table(sys.argv[2])
    else:
        sys.exit(__doc__)
