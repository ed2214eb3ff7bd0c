# heartmula-pipe build.  `make` builds the CPU backend; `make CUDA=1` adds the CUDA backend.
# `make test` is the CI test command.  Layout (DESIGN.md "Files"):
#   common/*.c            -> build/libhm.a          shared runtime + CPU model math
#   stages/<s>/*.c        -> build/stage_<s>.a      stage logic (everything but main.c)
#   stages/<s>/main.c     -> bin/hm-<s>             the stage process
#   kernels/*.cu (CUDA=1) -> build/libhmcuda.a
#   tools/<t>/*.c         -> bin/<t>                heartmula CLI, model generators
#   tests/test_*.c        -> build/tests/test_*     cmocka unit / parity / multi-process tests
CC      ?= gcc
BUILD   ?= build
BIN     ?= bin
NVCC    ?= nvcc
CUDA    ?= 0
O       ?= 2
CFLAGS  ?= -O$(O) -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-format-truncation \
           -fno-strict-aliasing -pthread -MMD -MP -Icommon -Ikernels -I/usr/include/cjson
LDLIBS  := -lzmq -lmsgpackc -lsndfile -lyaml -lpcre2-8 -lsystemd -lcjson -lutf8proc -lopenblas -lm -lpthread
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCCFLAGS ?= -O3 -std=c++17 -MMD -MP $(CUDA_ARCH) -Xcompiler -Wall,-Werror -Icommon -Ikernels -lineinfo \
             --expt-relaxed-constexpr -Werror all-warnings

ifeq ($(CUDA),1)
CFLAGS  += -DHM_CUDA=1 -I$(CUDA_HOME)/include
LDLIBS  += -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif

# Install the Debian packages on first use (tools/install-deps; a cheap header check otherwise).
ifeq ($(filter clean,$(MAKECMDGOALS)),)
ifneq ($(shell tools/install-deps --check >/dev/null 2>&1 && echo ok),ok)
$(info heartmula-pipe: installing build dependencies with tools/install-deps)
$(shell tools/install-deps >&2)
endif
endif

STAGES      := tokenizer backbone draft-verifier flow-matching vocoder
COMMON_SRC  := $(wildcard common/*.c)
COMMON_OBJ  := $(COMMON_SRC:%.c=$(BUILD)/%.o)
CU_SRC      := $(wildcard kernels/*.cu)
CU_OBJ      := $(CU_SRC:%.cu=$(BUILD)/%.o)
KCPU_SRC    := $(wildcard kernels/*.c)
KCPU_OBJ    := $(KCPU_SRC:%.c=$(BUILD)/%.o)
TOOLS       := $(patsubst tools/%/main.c,%,$(wildcard tools/*/main.c))
TEST_SRC    := $(wildcard tests/test_*.c)
TEST_BIN    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
FUZZ_SRC    := $(wildcard tests/fuzz_*.c)

stage_lib    = $(BUILD)/stage_$(1).a
stage_objs   = $(patsubst %.c,$(BUILD)/%.o,$(filter-out stages/$(1)/main.c,$(wildcard stages/$(1)/*.c)))
STAGE_LIBS  := $(foreach s,$(STAGES),$(call stage_lib,$(s)))
STAGE_BINS  := $(foreach s,$(STAGES),$(BIN)/hm-$(s))
TOOL_BINS   := $(foreach t,$(TOOLS),$(BIN)/$(t))
HMLIBS      := $(STAGE_LIBS) $(BUILD)/libhm.a $(if $(filter 1,$(CUDA)),$(BUILD)/libhmcuda.a)

.PHONY: all test demo clean fuzz check-cuda
all: $(STAGE_BINS) $(TOOL_BINS) $(BIN)/hm-launch $(TEST_BIN)

$(BUILD)/libhm.a: $(COMMON_OBJ) $(KCPU_OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
$(BUILD)/libhmcuda.a: $(CU_OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
define STAGE_RULES
$(call stage_lib,$(1)): $(call stage_objs,$(1))
	@mkdir -p $$(@D); rm -f $$@; ar rcs $$@ $$^
$(BIN)/hm-$(1): $(BUILD)/stages/$(1)/main.o $(HMLIBS)
	@mkdir -p $$(@D); $$(CC) $$(CFLAGS) -o $$@ $$< -Wl,--start-group $(HMLIBS) -Wl,--end-group $$(LDLIBS)
endef
$(foreach s,$(STAGES),$(eval $(call STAGE_RULES,$(s))))
define TOOL_RULES
$(BIN)/$(1): $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/$(1)/*.c)) $(HMLIBS)
	@mkdir -p $$(@D); $$(CC) $$(CFLAGS) -o $$@ $$(filter %.o,$$^) -Wl,--start-group $(HMLIBS) -Wl,--end-group $$(LDLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call TOOL_RULES,$(t))))
$(BIN)/hm-launch: $(patsubst %.c,$(BUILD)/%.o,$(wildcard launch/*.c)) $(HMLIBS)
	@mkdir -p $(@D); $(CC) $(CFLAGS) -o $@ $(filter %.o,$^) -Wl,--start-group $(HMLIBS) -Wl,--end-group $(LDLIBS)
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(HMLIBS)
	@mkdir -p $(@D); $(CC) $(CFLAGS) -o $@ $< -Wl,--start-group $(HMLIBS) -Wl,--end-group $(LDLIBS) -lcmocka

$(BUILD)/%.o: %.c
	@mkdir -p $(@D); $(CC) $(CFLAGS) -c -o $@ $<
$(BUILD)/%.o: %.cu
	@mkdir -p $(@D); $(NVCC) $(NVCCFLAGS) -c -o $@ $<

# Fuzz targets: libFuzzer via clang, run for a bounded time by tests/run.sh.
FUZZ_BIN := $(FUZZ_SRC:tests/%.c=$(BUILD)/fuzz/%)
$(BUILD)/fuzz/%: tests/%.c $(COMMON_SRC) $(KCPU_SRC) $(foreach s,$(STAGES),$(filter-out stages/$(s)/main.c,$(wildcard stages/$(s)/*.c)))
	@mkdir -p $(@D); clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Ikernels -I/usr/include/cjson \
	  -o $@ $^ $(LDLIBS)
fuzz: $(FUZZ_BIN)

test: all fuzz
	@bash tests/run.sh

demo: all
	@bash tools/demo.sh

clean:
	rm -rf $(BUILD) $(BIN) build-cuda bin-cuda

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- CUDA test programs (GPU engineer's block) -------------------------------------------------
# tests/gpu_*.c -> $(BUILD)/gpu/gpu_*, only with CUDA=1.  They need a GPU, so tests/run.sh does not
# run them; profiling/gpu-check builds and runs them on the GPU machine.
ifeq ($(CUDA),1)
GPU_SRC := $(wildcard tests/gpu_*.c)
GPU_BIN := $(GPU_SRC:tests/%.c=$(BUILD)/gpu/%)
all: $(GPU_BIN)
$(BUILD)/gpu/%: $(BUILD)/tests/%.o $(BUILD)/libhmcuda.a $(BUILD)/libhm.a
	@mkdir -p $(@D); $(CC) $(CFLAGS) -o $@ $< -Wl,--start-group $(BUILD)/libhmcuda.a $(BUILD)/libhm.a -Wl,--end-group \
	  -Wl,--as-needed $(LDLIBS)
# the kernel timeline reads CUPTI's activity records (the toolkit's libcupti)
$(BUILD)/gpu/gpu_timeline: LDLIBS += -lcupti
endif

