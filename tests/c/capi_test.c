/* Exercises the C ABI on a model file and prints what it read, for tests/capi.rs to compare with
 * the Rust API. Usage: capi_test MODEL.ets
 *
 * Output lines (values as the hex of their f32 bits, so the comparison is exact):
 *   tensor NAME RANK D0 .. DTYPE ENCODING NUMEL FNV1A64-OF-VALUE-BITS
 *   ids HEX...       embeddings of the token-id sequences
 *   texts HEX...     embeddings of the texts
 *   ok
 * Error paths are checked here; a failed check prints "FAIL ..." and exits 1. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ets.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("FAIL line %d: ", __LINE__);                                                \
            printf(__VA_ARGS__);                                                               \
            printf(" (last error: %s)\n", ets_last_error());                                   \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

static uint64_t fnv1a(const float *v, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        for (int b = 0; b < 4; b++) {
            h ^= (bits >> (8 * b)) & 0xff;
            h *= 0x100000001b3ULL;
        }
    }
    return h;
}

static void print_bits(const char *tag, const float *v, size_t n) {
    printf("%s", tag);
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        printf(" %08" PRIx32, bits);
    }
    printf("\n");
}

static void check_errors(const char *path) {
    CHECK(ets_open(NULL) == NULL, "ets_open(NULL) succeeded");
    CHECK(strstr(ets_last_error(), "NULL") != NULL, "no NULL in the message");
    CHECK(ets_open("no-such-file.ets") == NULL, "a missing file opened");
    CHECK(strstr(ets_last_error(), "no-such-file.ets") != NULL, "the path is not in the message");
    CHECK(ets_tensor_count(NULL) == 0, "a NULL file has tensors");
    CHECK(ets_encoder_open(path, "tpu") == NULL, "device tpu accepted");
    CHECK(strstr(ets_last_error(), "tpu") != NULL, "the device is not in the message");
    ets_close(NULL);
    ets_encoder_close(NULL);
}

static void list_tensors(ets_file *f) {
    size_t count = ets_tensor_count(f);
    CHECK(count > 0, "no tensors");
    for (size_t i = 0; i < count; i++) {
        uint64_t shape[ETS_MAX_RANK];
        size_t rank = 0, numel = 0, found = 99999;
        const char *name = ets_tensor_name(f, i);
        CHECK(name != NULL, "no name for %zu", i);
        CHECK(ets_tensor_shape(f, i, shape, ETS_MAX_RANK, &rank) == 0, "shape of %zu", i);
        CHECK(ets_tensor_numel(f, i, &numel) == 0, "numel of %zu", i);
        CHECK(ets_tensor_find(f, name, &found) == 0 && found == i, "find %s", name);
        float *values = malloc((numel + 1) * sizeof(float));
        if (!values) exit(2);
        values[numel] = 12345.0f; /* must stay: only numel values are written */
        if (numel > 0) {
            CHECK(ets_tensor_read_f32(f, i, values, numel - 1) == -1, "a short buffer was taken");
            CHECK(strstr(ets_last_error(), "too small") != NULL, "short buffer message");
        }
        CHECK(ets_tensor_read_f32(f, i, values, numel + 1) == 0, "read %s", name);
        CHECK(values[numel] == 12345.0f, "wrote past numel for %s", name);
        printf("tensor %s %zu", name, rank);
        for (size_t d = 0; d < rank; d++) printf(" %" PRIu64, shape[d]);
        printf(" %s %s %zu %016" PRIx64 "\n", ets_tensor_dtype(f, i), ets_tensor_encoding(f, i),
               numel, fnv1a(values, numel));
        free(values);
    }
    size_t idx;
    CHECK(ets_tensor_name(f, count) == NULL, "name past the end");
    CHECK(strstr(ets_last_error(), "out of range") != NULL, "out of range message");
    CHECK(ets_tensor_find(f, "no.such.tensor", &idx) == -1, "found a missing tensor");
    CHECK(ets_tensor_read_f32(f, 0, NULL, 10) == -1, "read into NULL");
}

static void embed(const char *path, ets_file *f) {
    /* An encoder built from the file outlives the file's handle. */
    ets_encoder *e = ets_encoder_from_file(f, "cpu");
    CHECK(e != NULL, "encoder");
    if (!e) return;
    ets_close(f);
    size_t hidden = ets_encoder_hidden_size(e);
    CHECK(hidden > 0 && strcmp(ets_encoder_device(e), "cpu") == 0, "hidden size / device");
    const uint32_t ids[] = {2, 7, 11, 13, 3, 2, 5, 3};
    const size_t lengths[] = {5, 3};
    float *out = calloc(2 * hidden, sizeof(float));
    if (!out) exit(2);
    CHECK(ets_encoder_embed(e, ids, lengths, 2, 1, out, 2 * hidden - 1) == -1, "short output");
    CHECK(ets_encoder_embed(e, ids, lengths, 2, 0, out, 2 * hidden) == 0, "embed ids");
    print_bits("ids", out, 2 * hidden);
    const uint32_t bad[] = {2, 1000000, 3};
    const size_t bad_len[] = {3};
    CHECK(ets_encoder_embed(e, bad, bad_len, 1, 0, out, hidden) == -1, "an id past the vocab");
    CHECK(strstr(ets_last_error(), "1000000") != NULL, "the id is not in the message");
    const char *texts[] = {"hello world", "a second sentence"};
    CHECK(ets_encoder_embed_texts(e, texts, 2, 0, out, 2 * hidden) == 0, "embed texts");
    print_bits("texts", out, 2 * hidden);
    free(out);
    ets_encoder_close(e);

    ets_encoder *by_path = ets_encoder_open(path, NULL);
    CHECK(by_path != NULL, "encoder by path (auto)");
    ets_encoder_close(by_path);

    /* Settings replacing the file's: CLS pooling, no normalization, 4 tokens. */
    ets_embed_options opts = {"cls", 0, 4};
    ets_encoder *cls = ets_encoder_open_with(path, "cpu", &opts);
    CHECK(cls != NULL, "encoder with options");
    if (cls) {
        float *v = calloc(2 * hidden, sizeof(float));
        if (!v) exit(2);
        CHECK(ets_encoder_embed_texts(cls, texts, 2, 0, v, 2 * hidden) == 0, "embed with options");
        print_bits("texts-cls", v, 2 * hidden);
        free(v);
        ets_encoder_close(cls);
    }
    ets_embed_options bad_pooling = {"max", -1, 0};
    CHECK(ets_encoder_open_with(path, "cpu", &bad_pooling) == NULL, "pooling max accepted");
    CHECK(strstr(ets_last_error(), "max") != NULL, "the pooling is not in the message");
    ets_embed_options bad_norm = {NULL, 7, 0};
    CHECK(ets_encoder_open_with(path, "cpu", &bad_norm) == NULL, "normalize 7 accepted");
    ets_encoder *plain = ets_encoder_open_with(path, "cpu", NULL);
    CHECK(plain != NULL, "NULL options keep the file's settings");
    ets_encoder_close(plain);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: capi_test MODEL.ets\n");
        return 2;
    }
    check_errors(argv[1]);
    ets_file *f = ets_open(argv[1]);
    CHECK(f != NULL, "open %s", argv[1]);
    if (!f) return 1;
    CHECK(ets_verify(f) == 0, "verify");
    CHECK(strstr(ets_header_json(f), "\"model\"") != NULL, "header JSON");
    CHECK(strlen(ets_version()) > 0, "version");
    list_tensors(f);
    embed(argv[1], f);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}
