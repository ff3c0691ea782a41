"""The parts of recovery that need only numpy: masks read from a pruned `.ets` file, the names
that tie its tensors to the source checkpoint, sentences, a safetensors reader and writer, and
the check that every masked weight is an exact zero before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np


class RecoveryError(Exception):
    """A recovery input or output that breaks a rule (the message says which and where)."""


# ---------------------------------------------------------------------------------------------
# Masks from a pruned file


def _bits(words: np.ndarray, count: int) -> np.ndarray:
    """The first `count` bits of little-endian uint64 words, LSB first, as booleans."""
    as_bytes = np.ascontiguousarray(words).astype("<u8").view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little")[:count].astype(bool)


def _tile_mask(t) -> np.ndarray:
    """The element mask of a `tile` tensor: kept tiles, minus element-bitmap holes."""
    rows, cols = t.shape
    th, tw = t.tile_shape
    gr, gc = t.grid_shape
    kept = _bits(t.bitmap, gr * gc).reshape(gr, gc)
    full = np.repeat(np.repeat(kept, th, axis=0), tw, axis=1)
    if t.element_bitmaps is not None:
        words = (th * tw + 63) // 64
        per_tile = _bits(t.element_bitmaps, int(kept.sum()) * words * 64)
        per_tile = per_tile.reshape(-1, words * 64)[:, : th * tw].reshape(-1, th, tw)
        # Kept tiles come in bitmap order (row-major over the grid).
        grid = np.zeros((gr, gc, th, tw), dtype=bool)
        grid[kept] = per_tile
        full &= grid.transpose(0, 2, 1, 3).reshape(gr * th, gc * tw)
    return full[:rows, :cols]


def _indices(f, section: dict) -> np.ndarray:
    part = next(p for p in section["parts"] if p["role"] == "indices")
    with open(f.path, "rb") as fh:
        fh.seek(part["offset"])
        data = fh.read(part["length"])
    return np.frombuffer(data, dtype="<u4")


def file_masks(f) -> Dict[str, np.ndarray]:
    """Boolean masks (True = the weight may be nonzero) of every 2-D tensor of an open `ets.File`
    stored as `tile`, `rows` or `cols`; tensors stored `dense` have no mask (all trainable)."""
    masks = {}
    for section in f.header["sections"]:
        if section.get("kind") != "tensor":
            continue
        name, kind = section["name"], section["encoding"]["kind"]
        shape = tuple(section["shape"])
        if kind == "dense":
            continue
        if kind == "tile":
            mask = _tile_mask(f.tiles(name))
        elif kind in ("rows", "cols"):
            mask = np.zeros(shape, dtype=bool)
            index = _indices(f, section)
            if kind == "rows":
                mask[index, :] = True
            else:
                mask[:, index] = True
        else:
            raise RecoveryError(f"{f.path}: tensor {name} has encoding {kind!r}, which has no mask")
        if mask.shape != shape:
            raise RecoveryError(f"{f.path}: mask of {name} is {mask.shape}, the tensor {shape}")
        masks[name] = mask
    return masks


def kept_tiles(f, tile) -> Dict[str, np.ndarray]:
    """Per 2-D layer weight of an open `ets.File`, the boolean grid of kept `tile` = (rows, cols)
    tiles: a `tile` tensor's bitmap (its tile shape must be `tile`), otherwise the tiles that hold
    a nonzero value. Two files keep the same tiles when these are equal."""
    th, tw = tile
    out = {}
    for name in f.tensor_names():
        _, shape, encoding = f.tensor_info(name)
        if not name.startswith("layers.") or len(shape) != 2:
            continue
        gr, gc = -(-shape[0] // th), -(-shape[1] // tw)
        if encoding.startswith("tile"):
            t = f.tiles(name)
            if t.tile_shape != (th, tw):
                raise RecoveryError(f"{f.path}: {name} has {t.tile_shape} tiles, not {tile}")
            out[name] = _bits(t.bitmap, gr * gc).reshape(gr, gc)
        else:
            w = np.zeros((gr * th, gc * tw), dtype=bool)
            w[: shape[0], : shape[1]] = f.tensor(name) != 0
            out[name] = w.reshape(gr, th, gc, tw).any(axis=(1, 3))
    return out


def same_tiles(a, b, tile) -> List[str]:
    """The layer weights whose kept tiles differ between two open files (empty: the same)."""
    ka, kb = kept_tiles(a, tile), kept_tiles(b, tile)
    return sorted(n for n in set(ka) | set(kb)
                  if n not in ka or n not in kb or not np.array_equal(ka[n], kb[n]))


def check_zeros(tensors: Dict[str, np.ndarray], masks: Dict[str, np.ndarray]) -> None:
    """Raises RecoveryError naming every tensor with a nonzero where its mask has a zero (and
    every masked tensor that is missing or of another shape)."""
    problems = []
    for name, mask in masks.items():
        w = tensors.get(name)
        if w is None:
            problems.append(f"{name}: missing")
        elif w.shape != mask.shape:
            problems.append(f"{name}: shape {w.shape}, mask {mask.shape}")
        else:
            bad = int(np.count_nonzero(w[~mask]))
            if bad:
                problems.append(f"{name}: {bad} nonzero values outside the mask")
    if problems:
        raise RecoveryError("weights break the pruned file's masks: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Names: canonical `.ets` names <-> Hugging Face BERT checkpoint names

_LAYER = {
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention.output": "attention.output.dense",
    "attention.layer_norm": "attention.output.LayerNorm",
    "ffn.intermediate": "intermediate.dense",
    "ffn.output": "output.dense",
    "ffn.layer_norm": "output.LayerNorm",
}
_TOP = {
    "embeddings.layer_norm": "embeddings.LayerNorm",
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "pooler.dense": "pooler.dense",
}


def _hf_candidates(canonical: str) -> List[str]:
    base, _, leaf = canonical.rpartition(".")
    if base.startswith("layers."):
        _, index, rest = base.split(".", 2)
        if rest not in _LAYER:
            return []
        hf_base = f"encoder.layer.{index}.{_LAYER[rest]}"
    elif base in _TOP:
        hf_base = _TOP[base]
    else:
        return []
    names = [f"{hf_base}.{leaf}"]
    if hf_base.endswith("LayerNorm"):
        names.append(f"{hf_base}.{'gamma' if leaf == 'weight' else 'beta'}")
    return names


def model_prefix(source_names: Iterable[str]) -> str:
    """The prefix of a checkpoint's BERT tensors ('' or e.g. 'bert.')."""
    names = set(source_names)
    for prefix in ("", "bert.", "model."):
        if f"{prefix}embeddings.word_embeddings.weight" in names:
            return prefix
    raise RecoveryError("the checkpoint has no embeddings.word_embeddings.weight: not a BERT model")


def source_names(canonical_names: Iterable[str], source: Iterable[str]) -> Dict[str, str]:
    """Maps each canonical name of a `.ets` file's BERT tensors (embeddings, layers, pooler) to
    its name in the source checkpoint (without the prefix of `model_prefix`); other tensors (a
    task head) are left out; a BERT tensor the checkpoint lacks is an error."""
    source = list(source)
    prefix = model_prefix(source)
    present = {n[len(prefix):] for n in source if n.startswith(prefix)}
    out, missing = {}, []
    for name in canonical_names:
        candidates = _hf_candidates(name)
        if not candidates:
            continue
        found = next((c for c in candidates if c in present), None)
        if found is None:
            missing.append(name)
        else:
            out[name] = found
    if missing:
        raise RecoveryError(f"the source checkpoint has no tensor for {', '.join(missing)}")
    return out


# ---------------------------------------------------------------------------------------------
# Sentences

_TEXT_COLUMNS = ("text", "sentence", "sentence1", "sentence_a", "sentence_1", "query",
                 "question", "premise", "content", "review", "document")


def read_sentences(path, skip: int = 0, limit: Optional[int] = None) -> List[str]:
    """Sentences of a file as et-convert's `--calibrate` reads them (one per line, or the text
    column of a TSV with a header), dropping the first `skip` and keeping at most `limit`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split("\t")]
    index = None
    if len(header) > 1:
        lower = [h.lower() for h in header]
        index = next((lower.index(c) for c in _TEXT_COLUMNS if c in lower), None)
    if index is None:
        rows = [l.strip() for l in lines]
    else:
        rows = [(l.split("\t")[index] if index < len(l.split("\t")) else "").strip()
                for l in lines[1:]]
    rows = [r for r in rows if r][skip:]
    return rows if limit is None else rows[:limit]


# ---------------------------------------------------------------------------------------------
# safetensors

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path) -> Dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file as a numpy array (BF16 widened to float32)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        raise RecoveryError(f"{path}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise RecoveryError(f"{path}: header of {n} bytes past the end ({len(data)} bytes)")
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = body[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(shape)
        elif info["dtype"] in _DTYPES:
            dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            out[name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
        else:
            raise RecoveryError(f"{path}: tensor {name} has dtype {info['dtype']}, not supported")
    return out


def write_safetensors(path, tensors: Dict[str, np.ndarray], metadata: Optional[dict] = None):
    """Writes tensors (float arrays as F32, integer arrays as they are) to a `.safetensors` file
    through a temporary file and a rename, so a reader never sees half a file."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<")))
        code = codes.get(np.dtype(a.dtype.newbyteorder("=")))
        if code is None:
            raise RecoveryError(f"tensor {name} has dtype {a.dtype}, which is not written")
        blob = a.tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)))
            fh.write(text)
            for blob in blobs:
                fh.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Files of a model folder copied beside the recovered weights: the configuration, the tokenizer
# and the sentence-transformers pipeline (so et-convert records the same pooling).
_COPIED = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
           "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
           "config_sentence_transformers.json")


def write_model_dir(out_dir, source_dir, tensors: Dict[str, np.ndarray],
                    masks_by_source_name: Dict[str, np.ndarray]) -> Path:
    """Checks the masks (nothing is written when one is broken), then writes
    OUT_DIR/model.safetensors and copies the source folder's configuration and tokenizer."""
    check_zeros(tensors, masks_by_source_name)
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "model.safetensors", tensors, {"format": "pt"})
    for name in _COPIED:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out_dir / name)
    for sub in sorted(source_dir.glob("*_Pooling")):
        if sub.is_dir():
            shutil.copytree(sub, out_dir / sub.name, dirs_exist_ok=True)
    return out_dir / "model.safetensors"
