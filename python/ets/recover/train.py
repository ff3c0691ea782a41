"""Distillation with fixed masks (PyTorch and transformers, imported only here).

The student starts from the pruned file's weights, the teacher is the dense source model; the
loss is the mean-pooled embedding MSE plus the mean over layers of the per-layer hidden-state
MSE (padding excluded). Only the encoder layers train (the embeddings are never pruned and stay
as they are); after every optimiser step each masked weight is set back to exact zeros outside
its mask, and its gradient is masked before the step so Adam's moments stay zero there too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .files import (RecoveryError, file_masks, model_prefix, read_safetensors, read_sentences,
                    source_names, write_model_dir)


@dataclass
class Settings:
    """What one recovery run does; the command line's options."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: float = 0.1
    device: str = "auto"
    seed: int = 0
    skip: int = 0
    max_sentences: Optional[int] = None
    max_length: int = 128
    log_every: int = 25


def _imports():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise RecoveryError(
            f"recovery needs PyTorch and transformers ({e}); install them with "
            "`pip install torch transformers`") from e
    return torch, transformers


def _log(message: str) -> None:
    print(f"ets.recover: {message}", file=sys.stderr, flush=True)


def _device(torch, wanted: str):
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RecoveryError("--device cuda: PyTorch sees no usable CUDA device")
    if wanted not in ("cpu", "cuda"):
        raise RecoveryError(f"--device {wanted!r}: expected cpu, cuda or auto")
    return torch.device(wanted)


def _models(torch, transformers, model_dir: Path, source: Dict[str, np.ndarray],
            student_weights: Dict[str, np.ndarray], device):
    """Teacher (the source) and student (the source with the pruned file's tensors), both
    BertModel without the pooling layer, in eval mode (no dropout: deterministic)."""
    config = transformers.BertConfig.from_pretrained(str(model_dir))
    prefix = model_prefix(source)
    base = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    models = []
    for weights in (base, {**base, **student_weights}):
        model = transformers.BertModel(config, add_pooling_layer=False)
        state = model.state_dict()
        missing = [k for k in state if k not in weights and not k.endswith("position_ids")]
        if missing:
            raise RecoveryError(f"{model_dir}: checkpoint lacks {', '.join(missing[:5])}")
        loaded = {k: torch.from_numpy(np.array(weights[k], copy=True)).to(state[k].dtype)
                  for k in state if k in weights}
        for k, v in loaded.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise RecoveryError(f"{k}: checkpoint shape {tuple(v.shape)}, "
                                    f"model {tuple(state[k].shape)}")
        model.load_state_dict(loaded, strict=False)
        models.append(model.to(device).eval())
    teacher, student = models
    for p in teacher.parameters():
        p.requires_grad_(False)
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith("encoder."))
    return teacher, student


def _loss(torch, teacher, student, batch):
    mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True).hidden_states
    s = student(**batch, output_hidden_states=True).hidden_states
    count = mask.sum(1)
    emb = ((s[-1] * mask).sum(1) / count - (t[-1] * mask).sum(1) / count).pow(2).mean()
    per_token = mask.sum() * s[-1].shape[-1]
    hidden = sum(((a - b).pow(2) * mask).sum() / per_token for a, b in zip(s[1:], t[1:]))
    return emb + hidden / (len(s) - 1)


def _schedule(steps: int, warmup: float):
    """The learning-rate factor of step i: a linear warm-up over the first `warmup` share of the
    steps, then a linear decay to zero at the last step."""
    warm = max(1, int(warmup * steps))
    return lambda i: min((i + 1) / warm, max(0.0, (steps - i) / (steps - warm + 1)))


def _batches(rng, lengths: List[int], size: int) -> List[np.ndarray]:
    """One pass over the sentences in random batches of similar length (less padding): a random
    order, sorted by length within windows of 50 batches, the batches then shuffled."""
    order = rng.permutation(len(lengths))
    window = 50 * size
    out = []
    for w in range(0, len(order) - size + 1, window):
        chunk = order[w:w + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        out += [chunk[i:i + size] for i in range(0, len(chunk) - size + 1, size)]
    return [out[i] for i in rng.permutation(len(out))]


def distill(model_dir, pruned, train_file, out_dir, settings: Settings) -> dict:
    """Runs recovery and writes OUT_DIR (model.safetensors, configuration, tokenizer); returns
    the losses on a fixed probe batch before and after, and the timing."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch, transformers = _imports()
    import ets

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    weights_path = model_dir / "model.safetensors"
    if not weights_path.is_file():
        raise RecoveryError(f"{model_dir}: no model.safetensors (one safetensors file is needed)")
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    device = _device(torch, settings.device)

    f = ets.open(pruned)
    masks = file_masks(f)
    source = read_safetensors(weights_path)
    prefix = model_prefix(source)
    names = source_names(f.tensor_names(), source)
    unmapped = sorted(set(masks) - set(names))
    if unmapped:
        raise RecoveryError(f"{pruned}: masked tensors outside the encoder: {', '.join(unmapped)}")
    student_weights = {names[n]: f.tensor(n) for n in names}
    for n, key in names.items():
        if source[prefix + key].shape != student_weights[key].shape:
            raise RecoveryError(f"{n}: {pruned} has shape {student_weights[key].shape}, the "
                                f"source {source[prefix + key].shape}")
    teacher, student = _models(torch, transformers, model_dir, source, student_weights, device)
    params = dict(student.named_parameters())
    masked = {}
    for n, mask in masks.items():
        key = names[n]
        if key not in params:
            raise RecoveryError(f"{n} ({key}) is masked but is not a weight of the model")
        masked[key] = (params[key], torch.from_numpy(mask).to(device))

    sentences = read_sentences(train_file, settings.skip, settings.max_sentences)
    if len(sentences) < settings.batch_size + 1:
        raise RecoveryError(f"{train_file}: {len(sentences)} sentences after skipping "
                            f"{settings.skip}; need more than one batch ({settings.batch_size})")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rng = np.random.RandomState(settings.seed)

    def batch_of(texts: List[str]):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=settings.max_length,
                        return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}

    # The probe batch is held out of training: the loss on it before and after is the report.
    probe = batch_of(sentences[: settings.batch_size])
    pool = sentences[settings.batch_size:]
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings.steps, settings.warmup))
    with torch.no_grad():
        before = float(_loss(torch, teacher, student, probe))
    _log(f"{len(masks)} masked weights, {len(pool)} training sentences, {settings.steps} steps "
         f"of {settings.batch_size} on {device}; probe loss {before:.5f}")
    batches, start, running = [], time.time(), []
    for step in range(settings.steps):
        if not batches:
            batches = _batches(rng, [len(t) for t in pool], settings.batch_size)
        batch = batch_of([pool[i] for i in batches.pop()])
        loss = _loss(torch, teacher, student, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p, m in masked.values():
                p.grad.masked_fill_(~m, 0.0)
            opt.step()
            sched.step()
            for p, m in masked.values():
                p.masked_fill_(~m, 0.0)
        running.append(loss.item())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            _log(f"step {step + 1}/{settings.steps} loss {np.mean(running):.5f} "
                 f"({time.time() - start:.0f} s)")
            running = []
    with torch.no_grad():
        after = float(_loss(torch, teacher, student, probe))
    _log(f"probe loss {before:.5f} -> {after:.5f}")

    out = dict(source)
    state = student.state_dict()
    for key, value in state.items():
        if prefix + key in out and value.dtype.is_floating_point:
            out[prefix + key] = value.detach().cpu().numpy().astype(np.float32)
    path = write_model_dir(out_dir, model_dir, out,
                           {prefix + names[n]: m for n, m in masks.items()})
    _log(f"wrote {path}")
    return {"probe_loss_before": before, "probe_loss_after": after,
            "seconds": time.time() - start, "steps": settings.steps}
