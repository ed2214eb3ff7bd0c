# heartmula-pipe build.  `make` builds the CPU backend; `make CUDA=1` adds the CUDA backend.
# `make test` is the CI test command.  Layout (DESIGN.md "Files"):
#   common/*.c            -> build/libhm.a          shared runtime + CPU model math
#   stages/<s>/*.c        -> build/stage_<s>.a      stage logic (everything but main.c)
#   stages/<s>/main.c     -> bin/hm-<s>             the stage process
#   kernels/*.cu (CUDA=1) -> build/libhmcuda.a
#   tools/<t>/*.c         -> bin/<t>                heartmula CLI, model generators
#   tests/test_*.c        -> build/tests/test_*     cmocka unit / parity / multi-process tests
CC      ?= gcc
NVCC    ?= nvcc
CUDA    ?= 0
O       ?= 2
CFLAGS  ?= -O$(O) -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-format-truncation \
           -fno-strict-aliasing -pthread -MMD -MP -Icommon -Ikernels -I/usr/include/cjson
LDLIBS  := -lzmq -lmsgpackc -lsndfile -lyaml -lpcre2-8 -lsystemd -lcjson -lutf8proc -lopenblas -lm -lpthread
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -Xcompiler -Wall,-Werror -Icommon -Ikernels -lineinfo \
             --expt-relaxed-constexpr -Werror all-warnings

ifeq ($(CUDA),1)
CFLAGS  += -DHM_CUDA=1 -I$(CUDA_HOME)/include
LDLIBS  += -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif

STAGES      := tokenizer backbone draft-verifier flow-matching vocoder
COMMON_SRC  := $(wildcard common/*.c)
COMMON_OBJ  := $(COMMON_SRC:%.c=build/%.o)
CU_SRC      := $(wildcard kernels/*.cu)
CU_OBJ      := $(CU_SRC:%.cu=build/%.o)
KCPU_SRC    := $(wildcard kernels/*.c)
KCPU_OBJ    := $(KCPU_SRC:%.c=build/%.o)
TOOLS       := $(notdir $(wildcard tools/*))
TEST_SRC    := $(wildcard tests/test_*.c)
TEST_BIN    := $(TEST_SRC:tests/%.c=build/tests/%)
FUZZ_SRC    := $(wildcard tests/fuzz_*.c)

stage_lib    = build/stage_$(1).a
stage_objs   = $(patsubst %.c,build/%.o,$(filter-out stages/$(1)/main.c,$(wildcard stages/$(1)/*.c)))
STAGE_LIBS  := $(foreach s,$(STAGES),$(call stage_lib,$(s)))
STAGE_BINS  := $(foreach s,$(STAGES),bin/hm-$(s))
TOOL_BINS   := $(foreach t,$(TOOLS),bin/$(t))
HMLIBS      := $(STAGE_LIBS) build/libhm.a $(if $(filter 1,$(CUDA)),build/libhmcuda.a)

.PHONY: all test demo clean fuzz check-cuda
all: $(STAGE_BINS) $(TOOL_BINS) $(TEST_BIN)

build/libhm.a: $(COMMON_OBJ) $(KCPU_OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
build/libhmcuda.a: $(CU_OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
define STAGE_RULES
$(call stage_lib,$(1)): $(call stage_objs,$(1))
	@mkdir -p $$(@D); rm -f $$@; ar rcs $$@ $$^
bin/hm-$(1): build/stages/$(1)/main.o $(HMLIBS)
	@mkdir -p $$(@D); $$(CC) $$(CFLAGS) -o $$@ $$< -Wl,--start-group $(HMLIBS) -Wl,--end-group $$(LDLIBS)
endef
$(foreach s,$(STAGES),$(eval $(call STAGE_RULES,$(s))))
define TOOL_RULES
bin/$(1): $(patsubst %.c,build/%.o,$(wildcard tools/$(1)/*.c)) $(HMLIBS)
	@mkdir -p $$(@D); $$(CC) $$(CFLAGS) -o $$@ $$(filter %.o,$$^) -Wl,--start-group $(HMLIBS) -Wl,--end-group $$(LDLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call TOOL_RULES,$(t))))
build/tests/%: build/tests/%.o $(HMLIBS)
	@mkdir -p $(@D); $(CC) $(CFLAGS) -o $@ $< -Wl,--start-group $(HMLIBS) -Wl,--end-group $(LDLIBS) -lcmocka

build/%.o: %.c
	@mkdir -p $(@D); $(CC) $(CFLAGS) -c -o $@ $<
build/%.o: %.cu
	@mkdir -p $(@D); $(NVCC) $(NVCCFLAGS) -c -o $@ $<

# Fuzz targets: libFuzzer via clang, run for a bounded time by tests/run.sh.
FUZZ_BIN := $(FUZZ_SRC:tests/%.c=build/fuzz/%)
build/fuzz/%: tests/%.c $(COMMON_SRC) $(foreach s,$(STAGES),$(filter-out stages/$(s)/main.c,$(wildcard stages/$(s)/*.c)))
	@mkdir -p $(@D); clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Ikernels -I/usr/include/cjson \
	  -o $@ $^ $(LDLIBS)
fuzz: $(FUZZ_BIN)

test: all fuzz
	@bash tests/run.sh

demo: all
	@bash tools/demo.sh

clean:
	rm -rf build bin out

-include $(shell find build -name '*.d' 2>/dev/null)
