#!/usr/bin/env python3
"""check-layers.py: fails when a module of src/ reaches a module it must not (docs/architecture.md, "Layers").

The allowed edges are read from the layer table of docs/architecture.md: one row per src/<module>/ with its
layer number and the modules it may use. Three checks:

  1. every directory under src/ has a row (a new module must be placed before it can be used), and every
     module a row allows sits on a lower layer (the table itself points down only);
  2. every `#include "<module>/..."` in src/<m>/ names m itself or a module m may use, and no file includes
     another module's private header (*_internal.h, db_driver.h);
  3. with a build directory (check-layers.py BUILD), every undefined symbol of BUILD/obj/src/<m>/*.o that
     another module's object defines comes from a module m may use: this catches calls made through a
     hand-written extern declaration, which check 2 cannot see.

Prints one line per violation (file:line: what, and the rule) and exits 1 if there was any.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")
ROW = re.compile(r"^\|\s*`(\w+)/`\s*\|\s*(\d+)\s*\|([^|]*)\|")
INCLUDE = re.compile(r'^\s*#\s*include\s+"(\w+)/([^"]+)"')
PRIVATE = re.compile(r"(_internal\.h|^db_driver\.h)$")


def read_table():
    layers, allowed = {}, {}
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            m = ROW.match(line)
            if not m:
                continue
            mod, layer, uses = m.group(1), int(m.group(2)), m.group(3)
            layers[mod] = layer
            allowed[mod] = set(re.findall(r"`?(\w+)/?`?", uses.replace("—", ""))) - {"none"}
    return layers, allowed


def modules():
    src = os.path.join(ROOT, "src")
    return sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))


def check_table(layers, allowed, errs):
    if not layers:
        errs.append(f"{DOC}: no layer table found (rows like | `engine/` | 1 | util | ... |)")
        return
    for mod in modules():
        if mod not in layers:
            errs.append(f"src/{mod}/: module missing from the layer table of docs/architecture.md")
    for mod, uses in allowed.items():
        for u in sorted(uses):
            if u not in layers:
                errs.append(f"docs/architecture.md: {mod}/ may use unknown module {u}/")
            elif layers[u] >= layers[mod]:
                errs.append(f"docs/architecture.md: {mod}/ (layer {layers[mod]}) may not use {u}/ "
                            f"(layer {layers[u]}): the table must point down only")


def check_includes(layers, allowed, errs):
    for mod in modules():
        if mod not in layers:
            continue
        top = os.path.join(ROOT, "src", mod)
        for dirpath, _, files in os.walk(top):
            for name in sorted(files):
                if not name.endswith((".c", ".h")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m or not os.path.isdir(os.path.join(ROOT, "src", m.group(1))):
                            continue
                        dep, header = m.group(1), m.group(2)
                        if dep == mod:
                            continue
                        if dep not in allowed[mod]:
                            errs.append(f"{rel}:{n}: includes {dep}/{header}, but {mod}/ (layer "
                                        f"{layers[mod]}) may use only {fmt(allowed[mod])}")
                        elif PRIVATE.search(header):
                            errs.append(f"{rel}:{n}: includes {dep}/{header}, a private header of {dep}/")


def fmt(mods):
    return ", ".join(f"{m}/" for m in sorted(mods)) or "no other module"


def nm(obj):
    out = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        sym, kind = parts[0], parts[1]
        if kind in ("U", "w", "v"):
            undefined.add(sym)
        elif kind.isupper():
            defined.add(sym)
    return defined, undefined


def check_symbols(build, layers, allowed, errs):
    objdir = os.path.join(build, "obj", "src")
    if not os.path.isdir(objdir):
        errs.append(f"{objdir}: no objects (build first, or run without a build directory)")
        return
    owner, uses = {}, []
    for mod in modules():
        for dirpath, _, files in os.walk(os.path.join(objdir, mod)):
            for name in sorted(files):
                if not name.endswith(".o"):
                    continue
                obj = os.path.join(dirpath, name)
                src = os.path.join(ROOT, os.path.relpath(obj, os.path.join(build, "obj")))[:-2] + ".c"
                if not os.path.exists(src):
                    continue  # a stale object of a deleted source
                defined, undefined = nm(obj)
                for s in defined:
                    owner.setdefault(s, mod)
                uses.append((os.path.relpath(src, ROOT), mod, undefined))
    for rel, mod, undefined in uses:
        if mod not in layers:
            continue
        for s in sorted(undefined):
            dep = owner.get(s)
            if dep and dep != mod and dep not in allowed[mod]:
                errs.append(f"{rel}: calls {s} of {dep}/, but {mod}/ may use only {fmt(allowed[mod])}")


def main():
    layers, allowed = read_table()
    errs = []
    check_table(layers, allowed, errs)
    check_includes(layers, allowed, errs)
    if len(sys.argv) > 1:
        check_symbols(sys.argv[1], layers, allowed, errs)
    for e in errs:
        print(e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
