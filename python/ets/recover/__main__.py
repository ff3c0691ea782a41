"""`python -m ets.recover MODEL_DIR PRUNED.ets TRAIN.tsv OUT_DIR [options]` (see ets.recover)."""

import argparse
import json
import sys

from .files import RecoveryError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ets.recover",
        description="Distil the dense model into a pruned .ets file's masks; write OUT_DIR with "
                    "model.safetensors (zeros exactly on the masks), config.json and tokenizer.")
    p.add_argument("model_dir", help="dense source model folder (the teacher)")
    p.add_argument("pruned", help="pruned .ets file (masks and starting weights)")
    p.add_argument("train", help="sentences: one per line, or a TSV with a text column")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of steps warming up")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", type=int, default=0,
                   help="drop the first K sentences (e.g. those that calibrated the pruning)")
    p.add_argument("--max-sentences", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128, help="tokens per sentence at most")
    p.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    a = p.parse_args(argv)
    if min(a.steps, a.batch_size, a.log_every) < 1 or a.lr <= 0 or a.skip < 0 \
            or not 0 <= a.warmup < 1 or (a.max_sentences is not None and a.max_sentences < 1):
        p.error("--steps, --batch-size, --log-every and --max-sentences must be positive, --lr "
                "above 0, --warmup in [0, 1), --skip at least 0")
    from .train import Settings, distill

    settings = Settings(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
                        device=a.device, seed=a.seed, skip=a.skip,
                        max_sentences=a.max_sentences, max_length=a.max_length,
                        log_every=a.log_every)
    import ets

    try:
        report = distill(a.model_dir, a.pruned, a.train, a.out_dir, settings)
    except (RecoveryError, ets.EtsError, OSError) as e:
        print(f"ets.recover: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
