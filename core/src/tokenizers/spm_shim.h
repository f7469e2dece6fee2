// The C interface of the engram_spm module, which wraps libsentencepiece.
//
// Why a separate module: Debian's libsentencepiece carries its own copy of protobuf-lite and
// exports its symbols, while libtorch pulls in the system libprotobuf. Linked into one process
// the two copies interpose on each other and the program crashes during static initialisation.
// The module is loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), so libsentencepiece binds to its
// own protobuf and nothing else sees it. Nothing crosses this boundary but C types.
#pragma once

#include <stddef.h>

extern "C" {

typedef struct espm_model espm_model;
typedef void (*espm_piece_fn)(void* user, int id, const char* piece, size_t piece_len, size_t begin, size_t end);
typedef void (*espm_text_fn)(void* user, const char* text, size_t len);

enum { ESPM_CONTROL = 1, ESPM_UNKNOWN = 2, ESPM_BYTE = 4 };

// Returns null and writes a message into err on failure.
espm_model* espm_load(const char* path, char* err, size_t err_len);
void espm_free(espm_model* model);
int espm_piece_size(const espm_model* model);
// The piece's bytes stay valid while the model lives.
const char* espm_id_to_piece(const espm_model* model, int id, size_t* len);
int espm_piece_to_id(const espm_model* model, const char* piece, size_t len);
int espm_piece_flags(const espm_model* model, int id);
int espm_bos_id(const espm_model* model);
int espm_eos_id(const espm_model* model);
// 0 on success; calls fn once per piece with its byte span in the input.
int espm_encode(const espm_model* model, const char* text, size_t len, espm_piece_fn fn, void* user, char* err, size_t err_len);
int espm_decode(const espm_model* model, const int* ids, size_t n, espm_text_fn fn, void* user, char* err, size_t err_len);
}
