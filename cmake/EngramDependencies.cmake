# Every dependency comes from a Debian package (see scripts/install-deps.sh for the list).
# On a machine with a pip-installed PyTorch, pass -DCMAKE_PREFIX_PATH=$(python3 -c
# 'import torch;print(torch.utils.cmake_prefix_path)') to build the core against its (CUDA) libtorch.

find_package(Torch REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(Threads REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(PNG REQUIRED)   # image decoding (libpng-dev)
find_package(JPEG REQUIRED)  # image decoding (libjpeg-dev: libjpeg-turbo)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# libtorch's CMake config exports a flat list; wrap it in one interface target.
add_library(engram_torch INTERFACE)
target_link_libraries(engram_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(engram_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
separate_arguments(_engram_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(engram_torch INTERFACE ${_engram_torch_flags})

# stb_image_write writes the demo's PNGs; images are read with libpng and libjpeg-turbo.
find_path(STB_INCLUDE_DIR stb_image_write.h PATH_SUFFIXES stb REQUIRED)

if(ENGRAM_BUILD_QT)
  find_package(Qt6 6.2 REQUIRED COMPONENTS Core Test Widgets PrintSupport)
  find_package(Qt6 6.2 QUIET OPTIONAL_COMPONENTS Svg)  # SVG heatmap export when qt6-svg-dev is present
  find_package(QCustomPlotQt6 REQUIRED)
endif()
