/* ets: the C ABI of libets.so (built by `cargo build --release` into target/release/).
 *
 * Rules every function keeps:
 *  - A failure returns NULL (handles, strings) or -1 (status codes); ets_last_error() then gives
 *    the reason, until the next failure on the same thread.
 *  - A NULL argument is an error, never a crash; no panic of the library crosses this boundary.
 *  - Buffers belong to the caller and come with their length in elements; one too small for the
 *    result is an error and is left unwritten.
 *  - Strings returned for a file live until ets_close; the others are static.
 *  - An ets_file may be read from several threads at once; an ets_encoder is used by one thread
 *    at a time.
 *
 *   ets_file *f = ets_open("model.ets");
 *   if (!f) { fprintf(stderr, "%s\n", ets_last_error()); return 1; }
 *   for (size_t i = 0; i < ets_tensor_count(f); i++) puts(ets_tensor_name(f, i));
 *   ets_close(f);
 */
#ifndef ETS_H
#define ETS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Highest rank of a tensor: a shape buffer of this many elements always suffices. */
#define ETS_MAX_RANK 4

/* An open, validated .ets file. */
typedef struct EtsFileHandle ets_file;
/* An encoder with the file's tokenizer and embedding settings. */
typedef struct EtsEncoderHandle ets_encoder;

/* The reason for the last failure on this thread ("" when none). */
const char *ets_last_error(void);
/* The library version, e.g. "0.1.0". */
const char *ets_version(void);

/* Opens and validates a file (its checksums are checked by ets_verify). NULL on failure. */
ets_file *ets_open(const char *path);
/* Closes a file; NULL is ignored. Encoders built from it stay usable. */
void ets_close(ets_file *file);
/* Verifies every section's SHA-256. 0, or -1 naming the first mismatch. */
int ets_verify(const ets_file *file);
/* The header as JSON: model configuration, recipe, provenance, embedding settings, sections. */
const char *ets_header_json(const ets_file *file);

/* Number of tensors (0 with an error when file is NULL). Tensors are indexed 0..count-1. */
size_t ets_tensor_count(const ets_file *file);
/* The canonical name of tensor index. */
const char *ets_tensor_name(const ets_file *file, size_t index);
/* Writes the index of the tensor called name to *index. 0, or -1 when there is none. */
int ets_tensor_find(const ets_file *file, const char *name, size_t *index);
/* Writes the rank to *rank and the logical dense shape to shape[0..rank]; capacity is the length
 * of shape. 0, or -1. */
int ets_tensor_shape(const ets_file *file, size_t index, uint64_t *shape, size_t capacity,
                     size_t *rank);
/* Writes the number of logical elements (the product of the shape) to *numel. 0, or -1. */
int ets_tensor_numel(const ets_file *file, size_t index, size_t *numel);
/* The stored element type: "f32", "f16" or "bf16". */
const char *ets_tensor_dtype(const ets_file *file, size_t index);
/* The encoding: "dense", "tile", "tile+elements", "rows" or "cols". */
const char *ets_tensor_encoding(const ets_file *file, size_t index);
/* Writes the tensor as dense row-major f32 (pruned elements 0) into out, which holds len floats
 * (at least ets_tensor_numel). 0, or -1. */
int ets_tensor_read_f32(const ets_file *file, size_t index, float *out, size_t len);

/* Opens the file at path and builds an encoder on device: "cpu", "cuda" (an error without a
 * usable GPU) or "auto" (CUDA when usable, else the CPU); NULL means "auto". NULL on failure. */
ets_encoder *ets_encoder_open(const char *path, const char *device);
/* Builds an encoder on an open file, which may then be closed first. NULL on failure. */
ets_encoder *ets_encoder_from_file(const ets_file *file, const char *device);
/* Embedding settings that replace the file's: pooling "mean" or "cls" (NULL keeps the file's),
 * normalize 1 or 0 (-1 keeps the file's), max_length in tokens (0 keeps the file's; capped by the
 * model's position table). */
typedef struct {
    const char *pooling;
    int normalize;
    size_t max_length;
} ets_embed_options;
/* ets_encoder_open and ets_encoder_from_file with options (NULL: the file's settings). */
ets_encoder *ets_encoder_open_with(const char *path, const char *device,
                                   const ets_embed_options *options);
ets_encoder *ets_encoder_from_file_with(const ets_file *file, const char *device,
                                        const ets_embed_options *options);
/* Closes an encoder; NULL is ignored. */
void ets_encoder_close(ets_encoder *encoder);
/* Width of one embedding (0 with an error when encoder is NULL). */
size_t ets_encoder_hidden_size(const ets_encoder *encoder);
/* The runtime in use: "cpu" or "cuda". */
const char *ets_encoder_device(const ets_encoder *encoder);
/* Embeds count token-id sequences: sequence i is the next lengths[i] ids of ids (special tokens
 * included, token types 0). Pooling, normalization and maximum length follow the encoder's settings
 * (the file's, or its options). Writes count * hidden_size floats to out, which holds out_len; batch_size sequences
 * run at a time (0 means 32). 0, or -1. */
int ets_encoder_embed(const ets_encoder *encoder, const uint32_t *ids, const size_t *lengths,
                      size_t count, size_t batch_size, float *out, size_t out_len);
/* Embeds count UTF-8 texts with the file's tokenizer, as et-run does (longer texts truncated to
 * the maximum length). Writes count * hidden_size floats to out, which holds out_len. 0, or -1. */
int ets_encoder_embed_texts(const ets_encoder *encoder, const char *const *texts, size_t count,
                            size_t batch_size, float *out, size_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* ETS_H */
