#!/usr/bin/env python3
"""Second reference for all-MiniLM-L6-v2: PyTorch + transformers (run where they are installed).

    python3 scripts/golden_torch.py [--count 60] [--device cpu|cuda]

Reads the sentences and token ids from fixtures/golden/all-minilm-l6-v2/tokens.json (written by
scripts/golden.py, so both references see the same ids) and writes
fixtures/golden/all-minilm-l6-v2-torch/{tokens.json,mean.npy,cls.npy} in the same format, computed
by transformers.BertModel in float64 (eval mode) from models/all-minilm-l6-v2. It also prints the
smallest cosine against the numpy reference.
"""

import argparse
import json
import os

import numpy as np
import torch
from transformers import BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("ETS_MODELS_DIR", os.path.join(ROOT, "models"))
GOLDEN = os.path.join(ROOT, "fixtures", "golden")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with open(os.path.join(GOLDEN, "all-minilm-l6-v2", "tokens.json"), encoding="utf-8") as f:
        meta = json.load(f)
    model = BertModel.from_pretrained(os.path.join(MODELS, "all-minilm-l6-v2"),
                                      add_pooling_layer=False, attn_implementation="eager")
    model = model.to(torch.float64).to(args.device).eval()
    mean, cls = [], []
    with torch.no_grad():
        for ids, types in list(zip(meta["ids"], meta["type_ids"]))[: args.count]:
            t = lambda v: torch.tensor([v], dtype=torch.long, device=args.device)
            h = model(input_ids=t(ids), token_type_ids=t(types),
                      attention_mask=t([1] * len(ids))).last_hidden_state[0]
            mean.append(h.mean(0).cpu().numpy())
            cls.append(h[0].cpu().numpy())
    mean, cls = np.array(mean), np.array(cls)
    out = os.path.join(GOLDEN, "all-minilm-l6-v2-torch")
    os.makedirs(out, exist_ok=True)
    n = len(mean)
    meta = dict(meta, count=n, sentences=meta["sentences"][:n], ids=meta["ids"][:n],
                type_ids=meta["type_ids"][:n],
                reference=f"transformers {__import__('transformers').__version__} BertModel, "
                          f"torch {torch.__version__}, float64, eval mode, device {args.device}")
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    np.save(os.path.join(out, "mean.npy"), mean.astype("<f4"))
    np.save(os.path.join(out, "cls.npy"), cls.astype("<f4"))
    ref = np.load(os.path.join(GOLDEN, "all-minilm-l6-v2", "mean.npy"))[:n].astype(np.float64)
    cos = (ref * mean).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(mean, axis=1)
    print(f"wrote {out}: {n} sentences; min cosine vs numpy reference {cos.min():.9f}")


if __name__ == "__main__":
    main()
