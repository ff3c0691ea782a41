"""Recovery after one-shot pruning: distil the dense model into the pruned one with its masks
fixed, and write a safetensors model whose zeros are exactly the pruned file's.

    python -m ets.recover MODEL_DIR PRUNED.ets TRAIN.tsv OUT_DIR [--steps N] [--batch-size B]
        [--lr LR] [--device cpu|cuda|auto] [--seed S] [--skip K] [--max-sentences N]
    et-convert OUT_DIR/model.safetensors out.ets --method existing --tile 16x16

MODEL_DIR is the dense source (config.json, model.safetensors, tokenizer): the teacher, and the
source of every tensor the pruned file lacks. The student starts from PRUNED.ets's tensors. The
masks come from PRUNED.ets (tile bitmaps and element bitmaps, `rows`/`cols` indices; `dense`
tensors train freely). TRAIN.tsv gives unlabelled sentences (one per line, or the text column of
a TSV with a header); `--skip` drops the first ones (those that calibrated the pruning). PyTorch
and transformers are needed only to train (`ets.recover.train`); the mask, name and file helpers
here need only numpy. The same seed on the same machine and device gives the same bytes.
"""

from .files import (RecoveryError, check_zeros, file_masks, kept_tiles, model_prefix,
                    read_safetensors, read_sentences, same_tiles, source_names, write_model_dir,
                    write_safetensors)

__all__ = ["RecoveryError", "check_zeros", "file_masks", "kept_tiles", "model_prefix",
           "read_safetensors", "read_sentences", "same_tiles", "source_names", "write_model_dir",
           "write_safetensors"]
