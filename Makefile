# The two commands of the README. Each installs what is missing, configures, builds, and then
# runs the main job (`make run`) or the whole test suite through CTest (`make test`).
#
#   make run      the GUI on the built-in demo model, or a headless tour without a display
#   make test     every test (labels: unit, reference, fuzz; slow suites at reduced size), then the
#                 installed-package check
#   make package  build/engram_<version>_amd64.deb

BUILD      ?= build
GENERATOR  ?= Ninja
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=

.PHONY: run test deps configure build fuzz package test-installed clean

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G $(GENERATOR) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# With a display the workbench GUI on the Fact World model; without one the headless tour.
run: build
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] && [ -x $(BUILD)/app/gui/engram ]; then $(BUILD)/app/gui/engram; \
	else $(BUILD)/app/cli/engram-cli tour; fi

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) fuzz
	$(MAKE) test-installed

package: build
	cd $(BUILD) && cpack -G DEB

# Installs the package, runs the tour, an edit and the GUI's screenshots from outside the source
# tree, and removes it again.
test-installed: build
	./scripts/test-installed.sh $(BUILD)

# The clang build with ASan + UBSan: libFuzzer targets, each run for a short time, and the
# torch-free unit and reference suites under the sanitizers (CTest label `sanitize`).
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B $(BUILD)-fuzz -G $(GENERATOR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DENGRAM_BUILD_FUZZERS=ON -DENGRAM_BUILD_QT=OFF -DENGRAM_BUILD_TESTS=ON $(CMAKE_ARGS)
	cmake --build $(BUILD)-fuzz -j $(JOBS) --target engram_fuzzers
	cd $(BUILD)-fuzz && ctest --output-on-failure -j $(JOBS) -L 'fuzz|sanitize'

clean:
	rm -rf $(BUILD) $(BUILD)-fuzz
