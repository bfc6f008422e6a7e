"""Fuzzing the readers: mutated rateints and session files.

Each case takes a good file, damages it in one seeded, random way (bytes
flipped, the file cut short, an extension, dataset or header key deleted or
renamed, a dtype or a shape changed, a value of the wrong kind written), and
opens it.  The only acceptable outcomes are a clean load, an exomiri error
(:class:`~exomiri.InputError` for rateints, :class:`~exomiri.SessionFormatError`
for sessions) or a :class:`~exomiri.DataWarning`; never another exception, a
hang or a crash.  The damaged file itself must not be written to by the reader.

``FITS_CASES`` and ``SESSION_CASES`` bound what CI runs; set the environment
variable ``EXOMIRI_FUZZ_SCALE`` (e.g. 20) to run that many times more.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

import exomiri
from exomiri import DataWarning, InputError, SessionFormatError
from exomiri.observation import INT_TIMES_COLUMNS

SCALE = int(os.environ.get("EXOMIRI_FUZZ_SCALE", "1"))
FITS_CASES = 60 * SCALE
SESSION_CASES = 200 * SCALE
SECONDS_PER_CASE = 60
SESSION = Path(__file__).parent / "data" / "session-1.0.h5"


def outcome(read, path, allowed):
    """Read ``path``; return "loaded", "warned" or the exomiri error's class name."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    message = path.name
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            read(path)
        result = "warned" if any(issubclass(w.category, DataWarning) for w in caught) else "loaded"
    except allowed as exc:
        message, result = str(exc), type(exc).__name__
    assert path.name in message, f"the message does not name the file: {message}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the reader wrote to its input"
    return result


def run_cases(kind, folder, cases, seed):
    """Run fuzz cases in this process, printing each before it is read (see in_child)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    results = Counter()
    if kind == "fits":
        good = folder / "good_rateints.fits"
        _good_rateints(good, rng)
        raw, read, allowed = good.read_bytes(), exomiri.open, InputError
    else:
        raw, read, allowed = SESSION.read_bytes(), exomiri.load, SessionFormatError
    for case in range(cases):
        path = folder / (f"case{case:04d}_rateints.fits" if kind == "fits" else f"case{case:04d}.h5")
        try:
            description = _mutate(kind, raw, path, rng)
        except Exception:  # astropy or h5py refused to write this mutation: nothing to read
            results["not written"] += 1
            continue
        print(f"case {case} {description}", flush=True)
        faulthandler.dump_traceback_later(SECONDS_PER_CASE, exit=True)  # a hang ends the child
        try:
            results[outcome(read, path, allowed)] += 1
        except Exception as exc:
            print(f"UNEXPECTED {type(exc).__name__}: {exc}", flush=True)
            raise SystemExit(1) from None
        finally:
            faulthandler.cancel_dump_traceback_later()
        path.unlink()
    print("RESULT " + json.dumps(results), flush=True)


def in_child(kind, folder, cases, seed):
    """Run the cases in a child process, so that a hang or a crash of a library (HDF5 and
    astropy run C code that a signal cannot interrupt) fails the test, naming the case."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_fuzz; "
        "test_fuzz.run_cases(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), kind, str(folder), str(cases), str(seed)],
        capture_output=True, text=True, timeout=SECONDS_PER_CASE * cases + 120,
    )
    lines = child.stdout.splitlines()
    last = next((line for line in reversed(lines) if line.startswith("case ")), "before any case")
    if child.returncode != 0 or not lines or not lines[-1].startswith("RESULT "):
        how = "hung" if "Timeout" in child.stderr else f"ended with {child.returncode}"
        pytest.fail(f"{last} {how}:\n{lines[-1] if lines else ''}\n{child.stderr[-3000:]}")
    return Counter(json.loads(lines[-1][len("RESULT "):]))


# ---------------------------------------------------------------------------
# rateints


def _good_rateints(path, rng):
    """A small valid rateints file (3 integrations of 20 x 8), as astropy writes it."""
    nints, nrows, ncols = 3, 20, 8
    primary = fits.PrimaryHDU()
    for key, value in {
        "TELESCOP": "JWST", "INSTRUME": "MIRI", "DETECTOR": "MIRIMAGE", "FILTER": "P750L",
        "EXP_TYPE": "MIR_LRS-SLITLESS", "TSOVISIT": True, "SUBARRAY": "SLITLESSPRISM",
        "SUBSTRT1": 1, "SUBSTRT2": 529, "SUBSIZE1": ncols, "SUBSIZE2": nrows, "NINTS": nints,
        "NGROUPS": 10, "NFRAMES": 1, "TFRAME": 0.159, "TGROUP": 0.159, "EFFINTTM": 1.431,
        "INTSTART": 1, "INTEND": nints, "PROGRAM": "01234", "OBSERVTN": "001", "VISIT": "001",
        "EXPOSURE": "1", "TARGPROP": "FUZZ",
    }.items():
        primary.header[key] = value
    table = np.zeros(nints, dtype=[(c, ">i4" if c == "integration_number" else ">f8") for c in INT_TIMES_COLUMNS])
    table["integration_number"] = np.arange(1, nints + 1)
    for c in INT_TIMES_COLUMNS[1:]:
        table[c] = 60000.0 + 1e-3 * table["integration_number"]
    shape = (nints, nrows, ncols)
    hdul = fits.HDUList([
        primary,
        fits.ImageHDU(rng.normal(100, 5, shape).astype(">f4"), name="SCI"),
        fits.ImageHDU(np.full(shape, 5.0, ">f4"), name="ERR"),
        fits.ImageHDU(rng.integers(0, 3, shape).astype(">u4"), name="DQ"),
        fits.BinTableHDU(table, name="INT_TIMES"),
        fits.ImageHDU(rng.normal(1, 0.1, shape).astype(">f4"), name="VAR_POISSON"),
        fits.ImageHDU(np.linspace(14, 4, nrows * ncols).reshape(nrows, ncols).astype(">f4"), name="WAVELENGTH"),
    ])
    hdul.writeto(path)


KEYS = ("INSTRUME", "DETECTOR", "FILTER", "EXP_TYPE", "TSOVISIT", "SUBSTRT1", "SUBSTRT2",
        "SUBSIZE1", "SUBSIZE2", "NINTS", "NGROUPS", "EFFINTTM", "INTSTART", "INTEND", "TGROUP")
EXTENSIONS = ("SCI", "ERR", "DQ", "INT_TIMES", "VAR_POISSON", "WAVELENGTH")
ODD_VALUES = ("abc", "", -5, 0, 10**6, 2.5, True, False, float("nan"))
ODD_DTYPES = (">i2", ">f8", ">u1", ">i8", "<f4", ">c8", ">u4")


def _mutate_bytes(raw, rng):
    kind = rng.choice(["flip", "truncate", "zero-block"])
    raw = bytearray(raw)
    if kind == "flip":
        for _ in range(rng.integers(1, 30)):
            raw[rng.integers(len(raw))] ^= 1 << rng.integers(8)
    elif kind == "truncate":
        raw = raw[: rng.integers(0, len(raw))]
    else:
        start = rng.integers(len(raw))
        raw[start : start + 2880] = bytes(len(raw[start : start + 2880]))
    return bytes(raw), f"bytes:{kind}"


def _mutate_structure(path, rng):
    kind = rng.choice([
        "delete-extension", "rename-extension", "delete-key", "odd-key", "dtype", "shape",
        "table-column", "table-rows", "nonfinite", "duplicate-extension",
    ])
    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    names = [h.name for h in hdul]
    ext = str(rng.choice(EXTENSIONS))
    i = names.index(ext)
    if kind == "delete-extension":
        del hdul[i]
    elif kind == "rename-extension":
        hdul[i].name = str(rng.choice(["SCl", "DATA", "ERR", "DQ", "INT_TIME"]))
    elif kind == "delete-key":
        del hdul[0].header[str(rng.choice(KEYS))]
    elif kind == "odd-key":
        value = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        hdul[0].header[str(rng.choice(KEYS))] = value
    elif kind == "dtype" and ext != "INT_TIMES":
        hdul[i].data = hdul[i].data.astype(str(rng.choice(ODD_DTYPES)))
    elif kind == "shape" and ext != "INT_TIMES":
        data = hdul[i].data
        choice = rng.integers(4)
        if choice == 0:
            hdul[i].data = data[..., :-1]
        elif choice == 1:
            hdul[i].data = data[:1]
        elif choice == 2:
            hdul[i].data = data.reshape(-1)
        else:
            hdul[i].data = data[None]
    elif kind == "table-column":
        table = hdul["INT_TIMES"].data
        keep = [c for c in table.names if c != rng.choice(table.names)]
        columns = [fits.Column(name=c, format="D", array=np.asarray(table[c], float)) for c in keep]
        hdul["INT_TIMES"] = fits.BinTableHDU.from_columns(columns, name="INT_TIMES")
    elif kind == "table-rows":
        table = hdul["INT_TIMES"].data
        rows = rng.integers(0, len(table), rng.integers(0, 2 * len(table) + 1))
        hdul["INT_TIMES"] = fits.BinTableHDU(table[rows], name="INT_TIMES")
    elif kind == "nonfinite" and ext not in ("INT_TIMES", "DQ"):
        data = np.array(hdul[i].data, dtype=float)
        data.flat[rng.integers(0, data.size, max(1, data.size // rng.integers(1, 50)))] = rng.choice(
            [np.nan, np.inf, -np.inf, 0.0]
        )
        hdul[i].data = data.astype(hdul[i].data.dtype)
    elif kind == "duplicate-extension":
        hdul.append(hdul[i].copy())
    else:
        kind = "unchanged"
    hdul.writeto(path, overwrite=True, output_verify="silentfix")
    return f"{kind}:{ext}"


def _mutate(kind, raw, path, rng):
    if kind == "fits":
        if rng.random() < 0.35:
            mutated, description = _mutate_bytes(raw, rng)
            path.write_bytes(mutated)
            return description
        path.write_bytes(raw)
        return _mutate_structure(path, rng)
    path.write_bytes(raw)
    return _mutate_session(path, rng)


def test_fuzzed_rateints_files_load_or_fail_cleanly(tmp_path):
    results = in_child("fits", tmp_path, FITS_CASES, 20260101)
    assert results["loaded"] + results["warned"] + results["InputError"] >= 0.9 * FITS_CASES, results
    assert results["InputError"] > 0 and results["loaded"] > 0, results


# ---------------------------------------------------------------------------
# sessions


def _objects(f):
    names = []
    f.visit(names.append)
    return names


def _mutate_session(path, rng):
    """Damage a copy of the reference session in place; return a description."""
    kind = rng.choice([
        "bytes", "truncate", "delete", "rename", "attribute", "dtype", "shape", "history",
        "meta", "scalars",
    ])
    if kind == "bytes":
        raw = bytearray(path.read_bytes())
        for _ in range(rng.integers(1, 40)):
            raw[rng.integers(len(raw))] ^= 1 << rng.integers(8)
        path.write_bytes(bytes(raw))
        return kind
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: rng.integers(0, len(raw))])
        return kind
    with h5py.File(path, "r+") as f:
        names = _objects(f)
        name = str(rng.choice(names))
        if kind == "delete":
            del f[name]
        elif kind == "rename":
            f.move(name, name + "_x")
        elif kind == "attribute":
            target = f if rng.random() < 0.4 else f[name]
            attrs = list(target.attrs) or ["encoding-type"]
            key = str(rng.choice(attrs))
            value = rng.choice(["", "2.0", "1", "abc", "1.0.0", "0.1", "Spectra", "{", "9.9"])
            if rng.random() < 0.3:
                del target.attrs[key]
            else:
                target.attrs[key] = str(value)
        elif kind in ("dtype", "shape") and isinstance(f[name], h5py.Dataset) and f[name].shape:
            ds = f[name]
            value = ds[()]
            attrs = dict(ds.attrs)
            if kind == "dtype":
                if value.dtype.names:  # a compound table becomes plain floats
                    value = np.zeros(len(value))
                else:
                    with np.errstate(all="ignore"):
                        value = value.astype(str(rng.choice(["i1", "f2", "u8", "f8", "S4", "c8"])))
            else:
                value = value.reshape(-1)[: max(value.size - 1, 0)]
            del f[name]
            new = f.create_dataset(name, data=value)
            new.attrs.update(attrs)
        elif kind == "history":
            records = [r.decode() if isinstance(r, bytes) else r for r in f["history"][()]]
            i = rng.integers(len(records))
            records[i] = str(rng.choice(["{", "[]", "{}", '{"step": 1}', json.dumps({"x": 1}), ""]))
            del f["history"]
            f.create_dataset("history", data=np.array(records, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        elif kind == "meta":
            meta = json.loads(f["observation"].attrs["meta"])
            key = str(rng.choice(sorted(meta)))
            odd = [None, "x", -1, [], {"a": 1}, 1e300, True]
            meta[key] = odd[rng.integers(len(odd))]
            f["observation"].attrs["meta"] = json.dumps(meta)
        elif kind == "scalars":
            products = f["observation/products"]
            product = products[str(rng.choice(list(products)))]
            product.attrs["scalars"] = str(rng.choice(["{", "[]", '{"method": 5}', '{"unknown": 1}']))
        else:
            kind = "unchanged"
    return kind


def test_fuzzed_session_files_load_or_fail_cleanly(tmp_path):
    results = in_child("session", tmp_path, SESSION_CASES, 20260102)
    read = results["loaded"] + results["warned"] + results["SessionFormatError"]
    assert read >= 0.9 * SESSION_CASES, results
    assert results["SessionFormatError"] > 0 and results["loaded"] > 0, results
