"""Read `.ets` files (tile-sparse transformer encoders) and embed sentences.

    import ets
    f = ets.open("model.ets")
    f.config["hidden_size"], f.tensor_names()[:3]
    w = f.tensor("layers.0.attention.query.weight")      # dense float32 numpy array
    enc = ets.Encoder("model.ets", device="auto")
    vectors = enc.encode(["a sentence", "another one"])  # numpy (2, hidden_size), as et-run

Every failure raises `ets.EtsError` with the library's message.
"""

from __future__ import annotations

import builtins
import json
import mmap
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import _ets

EtsError = _ets.EtsError

__all__ = ["EtsError", "File", "Tiles", "Encoder", "open"]

_ROLE_DTYPES = {
    "tile_bitmap": np.uint64,
    "row_offsets": np.uint32,
    "element_bitmaps": np.uint64,
    "element_offsets": np.uint32,
}
# bf16 has no numpy type: its values come as the raw uint16 bit patterns.
_VALUE_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}


@dataclass(frozen=True)
class Tiles:
    """The stored parts of a `tile` tensor, as read-only views of the file's mapping.

    `bitmap` has one bit per grid tile (uint64 words, LSB first, row-major over the grid);
    `row_offsets` the kept tiles before each block row (`grid_rows + 1` entries); `values` the
    kept tiles' values in order (row-major inside a tile; for `bf16` the uint16 bit patterns);
    `element_bitmaps` / `element_offsets` are present when the encoding keeps single elements.
    """

    shape: tuple
    tile_shape: tuple
    grid_shape: tuple
    dtype: str
    bitmap: np.ndarray
    row_offsets: np.ndarray
    values: np.ndarray
    element_bitmaps: Optional[np.ndarray] = None
    element_offsets: Optional[np.ndarray] = None


class File:
    """An open, validated `.ets` file (see `ets.open`)."""

    def __init__(self, path):
        self._path = str(path)
        self._native = _ets.File(self._path)
        self._header = json.loads(self._native.header_json())
        self._map = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def header(self) -> dict:
        """The whole JSON header."""
        return self._header

    @property
    def config(self) -> dict:
        """The model configuration (`model` object of the header)."""
        return self._header["model"]

    @property
    def recipe(self):
        """The pruning recipe that produced the file."""
        return self._header["recipe"]

    @property
    def embedding(self) -> Optional[dict]:
        """The sentence-embedding settings recorded in the file (format 1.1), or None."""
        return self._header.get("embedding")

    def tensor_names(self) -> list:
        return self._native.tensor_names()

    def tensor_info(self, name: str) -> tuple:
        """`(dtype, shape, encoding)` of a tensor."""
        dtype, shape, encoding = self._native.tensor_info(name)
        return dtype, tuple(shape), encoding

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a dense float32 array of its logical shape (pruned elements are 0)."""
        data, shape = self._native.tensor_f32(name)
        return np.frombuffer(data, dtype="<f4").reshape(shape)

    def tiles(self, name: str) -> Tiles:
        """The stored parts of a `tile` tensor as zero-copy views of the file's mapping."""
        rows, cols, th, tw, gr, gc, dtype, parts = self._native.tile_layout(name)
        if self._map is None:
            with builtins.open(self._path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {}
        for role, offset, length in parts:
            kind = _VALUE_DTYPES[dtype] if role == "values" else _ROLE_DTYPES[role]
            count = length // np.dtype(kind).itemsize
            arrays[role] = np.frombuffer(
                self._map, dtype=np.dtype(kind).newbyteorder("<"), count=count, offset=offset
            )
        return Tiles(
            shape=(rows, cols),
            tile_shape=(th, tw),
            grid_shape=(gr, gc),
            dtype=dtype,
            bitmap=arrays["tile_bitmap"],
            row_offsets=arrays["row_offsets"],
            values=arrays["values"],
            element_bitmaps=arrays.get("element_bitmaps"),
            element_offsets=arrays.get("element_offsets"),
        )

    def verify(self) -> None:
        """Checks every section's SHA-256; raises EtsError naming the first mismatch."""
        self._native.verify()

    def __repr__(self) -> str:
        return f"ets.File({self._path!r}, {len(self.tensor_names())} tensors)"


def open(path) -> File:  # noqa: A001 (the module's entry point, as in the C ABI)
    """Opens and validates a `.ets` file."""
    return File(path)


class Encoder:
    """A sentence encoder: the file's tokenizer, pooling, normalization and maximum length.

    `device` is "cpu", "cuda" (an error without a usable GPU) or "auto" (CUDA when usable,
    else the CPU; `fallback_reason` says why CUDA was not used). `pooling` ("mean", "cls"),
    `normalize` and `max_length` replace the file's settings, as et-run's options do.
    One encoder may be shared by threads: `encode` releases the GIL while it tokenizes and runs.
    """

    def __init__(
        self,
        path,
        device: str = "auto",
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
    ):
        self._native = _ets.Encoder(str(path), device, pooling, normalize, max_length)

    @property
    def device(self) -> str:
        return self._native.device

    @property
    def fallback_reason(self) -> Optional[str]:
        return self._native.fallback_reason

    @property
    def hidden_size(self) -> int:
        return self._native.hidden_size

    @property
    def settings(self) -> dict:
        pooling, normalize, max_length = self._native.settings()
        return {"pooling": pooling, "normalize": normalize, "max_length": max_length}

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts`, float32 of shape (len(texts), hidden_size), the numbers et-run
        prints. Longer texts are truncated to the maximum length, with a warning (UserWarning)
        per text, as et-run warns."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        texts = list(texts)
        data, truncated = self._native.encode(texts, batch_size)
        for index, before, kept in truncated:
            warnings.warn(
                f"input {index + 1} has {before} tokens; truncated to {kept} (maximum length)",
                stacklevel=2,
            )
        return np.frombuffer(data, dtype="<f4").reshape(len(texts), self.hidden_size)
