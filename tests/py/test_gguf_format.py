"""GGUF format parity with the `gguf` PyPI package (gguf-py, llama.cpp's own Python library).

For every tensor type lathe reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K):
blocks made by gguf.quants.quantize where gguf-py can quantize the type, else random block bytes with sane
f16 scales, written into a file by gguf-py's GGUFWriter, read and dequantized by lathe
(`lathe model tensor PATH NAME --out F.npy`) and compared bit for bit with gguf.quants.dequantize. Then every
tensor of the real SmolLM2-135M-Instruct GGUF (Q4_1 / Q8_0 / F32), and gguf-py's own reader on a file lathe
lists. Needs the test venv (gguf, numpy); the SmolLM2 test skips when the model file is missing.
"""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
LATHE = os.environ.get("LATHE_BIN", str(ROOT / "build" / "lathe"))
SMOLLM2 = pathlib.Path(
    os.environ.get("LATHE_CACHE", pathlib.Path.home() / ".cache" / "lathe") / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)

TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
# Offset of the f16 scale fields in each block (d, and dmin / m where the type has one).
SCALES = {QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0], QT.Q4_K: [0, 2],
          QT.Q5_K: [0, 2], QT.Q6_K: [208]}


def lathe(*args, check=True):
    return subprocess.run([LATHE, *map(str, args)], capture_output=True, text=True, check=check, timeout=120)


def lathe_tensor(path, name, out):
    lathe("model", "tensor", path, name, "--out", out)
    return np.load(out)


def make_raw(qtype, rows, cols, rng):
    """(raw bytes array as gguf-py stores it, or float data for F32/F16) for a rows x cols tensor."""
    x = (rng.standard_normal((rows, cols)) * 0.7).astype(np.float32)
    if qtype == QT.F32:
        return x
    if qtype == QT.F16:
        return x.astype(np.float16)
    try:
        return gguf.quants.quantize(x, qtype)
    except NotImplementedError:
        pass
    bsize, tbytes = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = rows * cols // bsize
    raw = rng.integers(0, 256, size=(nblocks, tbytes), dtype=np.uint8)
    for off in SCALES[qtype]:
        scale = (rng.uniform(1e-3, 0.2, size=nblocks)).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(nblocks, 2)
    return raw.reshape(rows, cols // bsize * tbytes)


def test_every_type_matches_gguf_py(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("general.name", "parity")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "", "ccc"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0, 0.0])
    expect = {}
    for qtype in TYPES:
        bsize = gguf.GGML_QUANT_SIZES[qtype][0]
        rows, cols = 3, 2 * max(bsize, 32)
        raw = make_raw(qtype, rows, cols, rng)
        name = f"t.{qtype.name}"
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expect[name] = (qtype, raw, (rows, cols))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    listing = json.loads(lathe("model", "tensor", path, "--json").stdout)
    by_name = {t["name"]: t for t in listing}
    assert set(by_name) == set(expect)
    mismatched = []
    for name, (qtype, raw, shape) in expect.items():
        t = by_name[name]
        assert t["type"] == qtype.name
        assert tuple(t["shape"]) == shape and tuple(t["ne"]) == shape[::-1]
        got = lathe_tensor(path, name, tmp_path / "t.npy")
        want = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        assert got.shape == want.shape == shape
        if not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            mismatched.append((name, float(np.max(np.abs(got - want)))))
    assert not mismatched, mismatched


def test_reader_agrees_with_gguf_py_reader(tmp_path):
    """gguf-py's GGUFReader and lathe list the same tensors (names, types, shapes, byte sizes)."""
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_uint32("general.alignment", 64)
    rng = np.random.default_rng(1)
    w.add_tensor("a", rng.standard_normal((5, 3)).astype(np.float32))
    w.add_tensor("b", gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), QT.Q8_0),
                 raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    listing = {t["name"]: t for t in json.loads(lathe("model", "tensor", path, "--json").stdout)}
    for t in r.tensors:
        mine = listing[t.name]
        assert mine["type"] == t.tensor_type.name
        assert mine["ne"] == [int(d) for d in t.shape]
        assert mine["bytes"] == int(t.n_bytes)


def test_bad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    cp = lathe("model", "tensor", path, check=False)
    assert cp.returncode == 1
    assert "version 1 is not supported" in cp.stderr and "bad.gguf" in cp.stderr
    cp = lathe("model", "tensor", path.with_name("missing.gguf"), check=False)
    assert cp.returncode == 4


@pytest.mark.skipif(not SMOLLM2.exists(), reason=f"SmolLM2 GGUF not found at {SMOLLM2} (run scripts/setup.sh)")
def test_smollm2_every_tensor_matches_gguf_py(tmp_path):
    r = gguf.GGUFReader(str(SMOLLM2))
    listing = {t["name"]: t for t in json.loads(lathe("model", "tensor", SMOLLM2, "--json").stdout)}
    assert len(listing) == len(r.tensors) == 272
    types = {}
    for t in r.tensors:
        got = lathe_tensor(SMOLLM2, t.name, tmp_path / "t.npy")
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        want = want.reshape([int(d) for d in reversed(t.shape)])
        assert got.shape == want.shape, t.name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert set(types) == {"Q4_1", "Q8_0", "F32"}, types


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_lathe_writer_read_by_gguf_py(tmp_path, dtype):
    """Files lathe's writer makes (`lathe model convert DIR X.gguf`) read by gguf-py's GGUFReader: same tensor
    list, shapes and types as lathe lists, metadata as written, and the quantized bytes are exactly what
    gguf-py's own quantizer makes of lathe's f32 values (ggml's reference quantizers: Q8_0 amax/127 and
    roundf, F16/BF16 round to nearest even)."""
    d = tmp_path / "tiny"
    lathe("model", "init-tiny", d, "--arch", "qwen3", "--layers", "1", "--hidden", "64", "--heads", "2",
          "--kv-heads", "1")
    out = tmp_path / f"tiny-{dtype}.gguf"
    lathe("model", "convert", d, out, "--dtype", dtype)
    r = gguf.GGUFReader(str(out))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "qwen3"
    assert int(r.fields["general.alignment"].parts[-1][0]) == 32
    assert int(r.fields["qwen3.block_count"].parts[-1][0]) == 1
    listing = {t["name"]: t for t in json.loads(lathe("model", "tensor", out, "--json").stdout)}
    assert len(listing) == len(r.tensors)
    f32 = tmp_path / "tiny-f32-ref.gguf"
    lathe("model", "convert", d, f32, "--dtype", "f32")
    ref = {t.name: t for t in gguf.GGUFReader(str(f32)).tensors}
    for t in r.tensors:
        mine = listing[t.name]
        assert mine["type"] == t.tensor_type.name and mine["ne"] == [int(x) for x in t.shape]
        if len(t.shape) == 1:
            assert t.tensor_type == QT.F32
            continue
        assert t.tensor_type.name == dtype.upper()
        values = np.asarray(ref[t.name].data, dtype=np.float32)
        want = values if dtype == "f32" else gguf.quants.quantize(values, t.tensor_type)
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(want).view(np.uint8)), t.name
        got = lathe_tensor(out, t.name, tmp_path / "t.npy")
        assert np.array_equal(got, gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)), t.name
