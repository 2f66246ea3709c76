# lathe: one binary (build/lathe), a static library of everything but main, and the test binaries.
#
#   make            build/lathe
#   make test       install what is missing (scripts/setup.sh --test), build, run every test (tests/run.sh)
#   make demo       install what is missing, build, run the newcomer flow (scripts/demo.sh)
#   make asan       unit tests built with AddressSanitizer + UBSan (run by make test)
#   make fuzz       libFuzzer targets (clang), run briefly by make test
#   make format     clang-format every C file
#   make lint       the house checks (scripts/lint.sh): clang-format, cppcheck, layering, no weak references
#
# Sources are found by wildcard: a new src/<module>/*.c joins the library, a new tests/unit/test_*.c becomes a
# cmocka binary, a new tests/fuzz/fuzz_*.c a libFuzzer target. No per-file rules.

CC      ?= cc
BUILD   ?= build
PKGS    := libmicrohttpd jansson sqlite3 libpq openblas libpcre2-8 yaml-0.1 libarchive libcurl libcrypto ompi-c
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT     ?= -O2 -march=native
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
BASEFLAGS := -std=c11 -D_GNU_SOURCE -g -fopenmp -pthread -MMD -MP -Isrc $(WARN) $(PKG_CFLAGS)
CFLAGS  ?=
ALLCFLAGS = $(BASEFLAGS) $(OPT) $(CFLAGS)
LIBS    := $(PKG_LIBS) -fopenmp -pthread -lm

SRC     := $(sort $(shell find src -name '*.c' ! -path src/cli/main.c))
OBJ     := $(SRC:%.c=$(BUILD)/obj/%.o)
UNIT    := $(sort $(wildcard tests/unit/test_*.c))
UNITBIN := $(UNIT:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ    := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZBIN := $(FUZZ:tests/fuzz/%.c=$(BUILD)/fuzz/%)
ASANBIN := $(UNIT:tests/unit/%.c=$(BUILD)/asan/tests/%)

.PHONY: all test demo asan fuzz unit format lint clean setup
all: $(BUILD)/lathe

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@

$(BUILD)/liblathe.a: $(OBJ)
	@rm -f $@
	ar rcs $@ $^

# The library is linked plainly, by the binary and the tests alike: every registration table (subcommands,
# route groups, migration areas) names its entries directly, so a missing one is a link error.

$(BUILD)/lathe: $(BUILD)/obj/src/cli/main.o $(BUILD)/liblathe.a
	$(CC) $(ALLCFLAGS) $(BUILD)/obj/src/cli/main.o $(BUILD)/liblathe.a -o $@ $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/liblathe.a
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itests $< $(BUILD)/liblathe.a -o $@ $(LIBS) -lcmocka

unit: $(UNITBIN)

# Sanitizer build of the same sources, in its own tree.
ASANFLAGS := $(BASEFLAGS) -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
$(BUILD)/asan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ASANFLAGS) -c $< -o $@
$(BUILD)/asan/liblathe.a: $(SRC:%.c=$(BUILD)/asan/obj/%.o)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/asan/tests/%: tests/unit/%.c $(BUILD)/asan/liblathe.a
	@mkdir -p $(dir $@)
	$(CC) $(ASANFLAGS) -Itests $< $(BUILD)/asan/liblathe.a -o $@ $(LIBS) -lcmocka -fsanitize=address,undefined
asan: $(ASANBIN)

# libFuzzer targets: clang, the library rebuilt with coverage instrumentation.
FUZZFLAGS := $(BASEFLAGS) -O1 -fsanitize=fuzzer-no-link,address,undefined -Wno-unused-command-line-argument -Wno-pass-failed
$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZFLAGS) -c $< -o $@
$(BUILD)/fuzz/liblathe.a: $(SRC:%.c=$(BUILD)/fuzz/obj/%.o)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/fuzz/%: tests/fuzz/%.c $(BUILD)/fuzz/liblathe.a
	@mkdir -p $(dir $@)
	clang $(FUZZFLAGS) -fsanitize=fuzzer $< $(BUILD)/fuzz/liblathe.a -o $@ $(LIBS)
fuzz: $(FUZZBIN)

setup:
	@scripts/setup.sh --test

test: setup
	@$(MAKE) --no-print-directory -j2 all unit
	@$(MAKE) --no-print-directory -j2 asan fuzz
	@tests/run.sh

demo:
	@scripts/setup.sh
	@$(MAKE) --no-print-directory -j2 all
	@scripts/demo.sh

format:
	clang-format -i $(shell find src tests -name '*.c' -o -name '*.h')

# With objects in $(BUILD)/obj, the layering check also reads their symbols (build first for that part).
lint:
	@scripts/lint.sh $(BUILD)

clean:
	rm -rf $(BUILD)

# src/api/openapi.c embeds src/api/openapi.json with .incbin: rebuild it when the document changes.
$(BUILD)/obj/src/api/openapi.o $(BUILD)/asan/obj/src/api/openapi.o $(BUILD)/fuzz/obj/src/api/openapi.o: src/api/openapi.json

# src/api/routes_ui.c embeds the dashboard's files (web/) with .incbin: rebuild it when one changes.
$(BUILD)/obj/src/api/routes_ui.o $(BUILD)/asan/obj/src/api/routes_ui.o $(BUILD)/fuzz/obj/src/api/routes_ui.o: $(wildcard web/*)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
