#include "engram/runtime.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <thread>

namespace engram {

int init_runtime() {
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0) threads = std::atoi(env);
    if (threads > 0 && at::get_num_threads() != threads) at::set_num_threads(threads);
    return at::get_num_threads();
}

}  // namespace engram
