// libFuzzer target: the safetensors header parser must either accept a file or throw
// engram::Error; any crash, sanitizer report or other exception is a bug.
#include <cstddef>
#include <cstdint>

#include "engram/error.h"
#include "engram/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        engram::SafetensorsHeader h = engram::parse_safetensors_header(data, size, "fuzz.safetensors");
        // Whatever was accepted must describe bytes inside the buffer.
        for (const auto& t : h.tensors)
            if (h.data_offset + t.end > size || t.begin > t.end) __builtin_trap();
    } catch (const engram::Error&) {
    }
    return 0;
}
