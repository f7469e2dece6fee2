#include "arch/arch.h"

#include "engram/error.h"

namespace engram {

namespace {
const Family* const kFamilies[] = {&kGpt2Family, &kGptjFamily, &kLlamaFamily, &kVitFamily};
}

const Family& family_of(Arch arch) {
    for (const Family* f : kFamilies)
        if (f->arch == arch) return *f;
    throw Error(ErrorKind::Internal, "no family table for this architecture");
}

}  // namespace engram
