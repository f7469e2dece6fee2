// Precompiled for engram_core: the libtorch headers cost 10-20 s per file otherwise.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
