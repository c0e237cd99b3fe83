"""Accelerator YAML -> schema check -> cross-field checks -> `NPUSpec`.

All problems of a file are collected; the single `InputError` line names the
file, then each problem as ``<field path>: <what was expected>``, e.g.

    configs/npu.yaml: memories.sram.size_bytes: must be a positive int, got -4

Unknown keys get a "did you mean". The YAML layout (see configs/npu_int8.yaml)::

    name: str                         clock_mhz: number > 0
    double_buffering: bool = true     static_power_mw: number >= 0 = 0
    pe_array: {rows, cols, dataflow, fold_overlap = per_fold, acc_bits = 32,
               precisions: [{w_bits, a_bits, macs_per_pe_per_cycle,
                             energy_per_mac_pj}, ...]}
    memories:                         # ordered: off-chip, global buffer[, local]
      <name>: {size_bytes, bandwidth_bytes_per_cycle | bandwidth_gb_per_s,
               read_energy_pj_per_byte, write_energy_pj_per_byte}
    sfus:                             # softmax, gelu, layernorm, requant required
      <unit>: {lanes, cycles_per_element, cycles_per_row = 0,
               energy_per_element_pj = 0}
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from simulator.errors import InputError
from simulator.safe_yaml import StrictLoader, read_capped

from .spec import (
    DATAFLOWS,
    FOLD_OVERLAPS,
    REQUIRED_SFU_UNITS,
    SFU,
    SFU_UNITS,
    MemoryLevel,
    NPUSpec,
    PEArray,
    PrecisionMode,
)

__all__ = ["load", "parse", "SpecError", "load_distinct", "resolve_path", "content_digest", "CONFIG_DIR"]

_MISSING = object()


class SpecError(InputError):
    """An invalid accelerator file; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: list[str]):
        # one line, whatever odd characters the file's keys contain
        super().__init__(f"{source}: " + "; ".join(problems).replace("\n", "\\n"))
        self.source = source
        self.problems = list(problems)


# ----------------------------------------------------------------- checkers
# A checker returns (value, None) or (None, "must be ...").


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _int_range(lo: int, hi: int | None, what: str) -> Callable:
    def check(v):
        if _is_int(v) and v >= lo and (hi is None or v <= hi):
            return v, None
        return None, f"must be {what}, got {_show(v)}"
    return check


def _number(positive: bool) -> Callable:
    what = "a positive number" if positive else "a number >= 0"

    def check(v):
        if _is_num(v) and (v > 0 if positive else v >= 0):
            return float(v), None
        return None, f"must be {what}, got {_show(v)}"
    return check


def _choice(options: tuple[str, ...]) -> Callable:
    def check(v):
        if isinstance(v, str) and v in options:
            return v, None
        hint = _did_you_mean(v, options) if isinstance(v, str) else ""
        return None, f"must be one of {', '.join(options)}, got {_show(v)}{hint}"
    return check


def _string(v):
    if isinstance(v, str) and v.strip():
        return v, None
    return None, f"must be a non-empty string, got {_show(v)}"


def _boolean(v):
    if isinstance(v, bool):
        return v, None
    return None, f"must be true or false, got {_show(v)}"


POS_INT = _int_range(1, None, "a positive int")
BITS = _int_range(1, 32, "an int in 1..32")
ACC_BITS = _int_range(8, 64, "an int in 8..64")
POS_NUM = _number(True)
NONNEG_NUM = _number(False)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ------------------------------------------------------------- the schema
# field name -> (checker, default); default _MISSING means required.

_TOP = {
    "name": (_string, _MISSING),
    "clock_mhz": (POS_NUM, _MISSING),
    "double_buffering": (_boolean, True),
    "static_power_mw": (NONNEG_NUM, 0.0),
    "pe_array": (None, _MISSING),
    "memories": (None, _MISSING),
    "sfus": (None, _MISSING),
}
_PE_ARRAY = {
    "rows": (POS_INT, _MISSING),
    "cols": (POS_INT, _MISSING),
    "dataflow": (_choice(DATAFLOWS), _MISSING),
    "fold_overlap": (_choice(FOLD_OVERLAPS), "per_fold"),
    "acc_bits": (ACC_BITS, 32),
    "precisions": (None, _MISSING),
}
_PRECISION = {
    "w_bits": (BITS, _MISSING),
    "a_bits": (BITS, _MISSING),
    "macs_per_pe_per_cycle": (POS_INT, _MISSING),
    "energy_per_mac_pj": (NONNEG_NUM, _MISSING),
}
_BANDWIDTH_KEYS = ("bandwidth_bytes_per_cycle", "bandwidth_gb_per_s")
_MEMORY = {
    "size_bytes": (POS_INT, _MISSING),
    "bandwidth_bytes_per_cycle": (POS_NUM, None),
    "bandwidth_gb_per_s": (POS_NUM, None),
    "read_energy_pj_per_byte": (NONNEG_NUM, _MISSING),
    "write_energy_pj_per_byte": (NONNEG_NUM, _MISSING),
}
_SFU = {
    "lanes": (POS_INT, _MISSING),
    "cycles_per_element": (POS_NUM, _MISSING),
    "cycles_per_row": (NONNEG_NUM, 0.0),
    "energy_per_element_pj": (NONNEG_NUM, 0.0),
}


def _section(data: Any, schema: dict, path: str, probs: list[str]) -> dict | None:
    """Check one mapping against ``schema``; return the checked values or None."""
    if not isinstance(data, dict):
        probs.append(f"{path or 'top level'}: must be a mapping, got {_show(data)}")
        return None
    out: dict = {}
    for key in data:
        if key not in schema:
            probs.append(f"{_join(path, key)}: unknown key{_did_you_mean(key, schema)}")
    for key, (check, default) in schema.items():
        if key not in data:
            if default is _MISSING:
                probs.append(f"{_join(path, key)}: missing")
                out[key] = None
            else:
                out[key] = default
            continue
        if check is None:  # a nested section, checked by the caller
            out[key] = data[key]
            continue
        value, err = check(data[key])
        if err:
            probs.append(f"{_join(path, key)}: {err}")
        out[key] = value
    return out


def _named_sections(data: Any, schema: dict, path: str, probs: list[str]) -> dict | None:
    """A mapping name -> section (memories, sfus); keeps the YAML order."""
    if not isinstance(data, dict):
        probs.append(f"{path}: must be a mapping of name -> settings, got {_show(data)}")
        return None
    out = {}
    for name, body in data.items():
        if not isinstance(name, str):
            probs.append(f"{_join(path, name)}: name must be a string, got {_show(name)}")
            continue
        out[name] = _section(body, schema, _join(path, name), probs)
    return out


def _precisions(data: Any, path: str, probs: list[str]) -> list[PrecisionMode]:
    if not isinstance(data, list) or not data:
        probs.append(f"{path}: must be a non-empty list of modes, got {_show(data)}")
        return []
    modes, seen = [], set()
    for i, body in enumerate(data):
        p = _section(body, _PRECISION, f"{path}[{i}]", probs)
        if p is None or any(v is None for v in p.values()):
            continue
        if (p["w_bits"], p["a_bits"]) in seen:
            probs.append(f"{path}[{i}]: duplicate mode W{p['w_bits']}A{p['a_bits']}")
            continue
        seen.add((p["w_bits"], p["a_bits"]))
        modes.append(PrecisionMode(**p))
    return modes


def _pe_array(data: Any, probs: list[str]) -> PEArray | None:
    pe = _section(data, _PE_ARRAY, "pe_array", probs)
    if pe is None:
        return None
    modes = _precisions(pe["precisions"], "pe_array.precisions", probs) if "precisions" in data else []
    if not modes or any(pe[k] is None for k in ("rows", "cols", "dataflow", "fold_overlap", "acc_bits")):
        return None
    return PEArray(pe["rows"], pe["cols"], pe["dataflow"], pe["fold_overlap"], pe["acc_bits"], tuple(modes))


def _memories(data: Any, clock_mhz: float | None, probs: list[str]) -> list[MemoryLevel]:
    levels = _named_sections(data, _MEMORY, "memories", probs)
    if levels is None:
        return []
    if not 2 <= len(levels) <= 3:
        probs.append("memories: must list 2 or 3 levels, outermost first (off-chip, "
                     f"global buffer[, PE-local]), got {len(levels)}")
    out = []
    for name, lv in levels.items():
        if lv is None:
            continue
        given = [k for k in _BANDWIDTH_KEYS if k in data[name]]
        if len(given) != 1:
            probs.append(f"memories.{name}: give exactly one of {' or '.join(_BANDWIDTH_KEYS)}")
            continue
        if any(v is None for k, v in lv.items() if k not in _BANDWIDTH_KEYS or k == given[0]):
            continue
        bw = lv[given[0]]
        if given[0] == "bandwidth_gb_per_s":
            if clock_mhz is None:
                continue
            bw = bw * 1e9 / (clock_mhz * 1e6)  # GB/s -> bytes per cycle, 1 GB = 1e9 B
        out.append(MemoryLevel(name, lv["size_bytes"], bw,
                               lv["read_energy_pj_per_byte"], lv["write_energy_pj_per_byte"]))
    return out


def _sfus(data: Any, probs: list[str]) -> list[SFU]:
    units = _named_sections(data, _SFU, "sfus", probs)
    if units is None:
        return []
    out = []
    for name, u in units.items():
        if name not in SFU_UNITS:
            probs.append(f"sfus.{name}: unknown unit{_did_you_mean(name, SFU_UNITS)}; "
                         f"units are {', '.join(SFU_UNITS)}")
        elif u is not None and all(v is not None for v in u.values()):
            out.append(SFU(name, **u))
    for name in REQUIRED_SFU_UNITS:
        if name not in units:
            probs.append(f"sfus.{name}: missing (every NPU needs softmax, gelu, layernorm, requant)")
    return out


def _cross_checks(pe: PEArray, memories: list[MemoryLevel], probs: list[str]) -> None:
    if len(memories) != 3:
        return
    local = memories[2]
    widest = max(max(p.w_bits, p.a_bits) for p in pe.precisions)
    need = pe.pes * (math.ceil(pe.acc_bits / 8) + math.ceil(widest / 8))
    if local.size_bytes < need:
        probs.append(f"memories.{local.name}.size_bytes: the PE-local level must hold one "
                     f"stationary word and one accumulator per PE (>= {need} for "
                     f"{pe.rows}x{pe.cols} PEs), got {local.size_bytes}")


def parse(data: Any, source: str = "<dict>") -> NPUSpec:
    """Validate an already-parsed YAML document; raise `SpecError` listing all problems."""
    probs: list[str] = []
    top = _section(data, _TOP, "", probs)
    if top is None:
        raise SpecError(source, probs)
    pe = _pe_array(data["pe_array"], probs) if "pe_array" in data else None
    memories = _memories(data["memories"], top["clock_mhz"], probs) if "memories" in data else []
    sfus = _sfus(data["sfus"], probs) if "sfus" in data else []
    if pe is not None and not probs:
        _cross_checks(pe, memories, probs)
    if probs:
        raise SpecError(source, probs)
    return NPUSpec(
        name=top["name"], source=source, clock_mhz=top["clock_mhz"], pe_array=pe,
        memories=tuple(memories), sfus=tuple(sfus),
        double_buffering=top["double_buffering"], static_power_mw=top["static_power_mw"],
    )


_UniqueKeyLoader = StrictLoader   # duplicate keys, alias expansion and size: `simulator.safe_yaml`


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = read_capped(f, path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such accelerator file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an accelerator YAML file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{path}: invalid YAML{where}: {what}") from None
    if data is None:
        raise InputError(f"{path}: empty file, expected an accelerator description")
    return data


def load(path_or_paths: str | os.PathLike | list | tuple) -> NPUSpec | list[NPUSpec]:
    """Load one accelerator YAML (-> NPUSpec) or several (-> list, same order).

    With several files every file is checked and all errors are reported in
    one `InputError`, files separated by `` | ``.
    """
    if isinstance(path_or_paths, (list, tuple)):
        specs, errors = [], []
        for p in path_or_paths:
            try:
                specs.append(load(p))
            except InputError as e:
                errors.append(str(e))
        if errors:
            raise InputError(" | ".join(errors))
        return specs
    path = os.fspath(path_or_paths)
    return parse(_read_yaml(path), source=path)


# ------------------------------------------------------------- identity
# An accelerator is its file's content, not only its ``name:``: a copy of
# npu_int8.yaml with a bigger array and the same name is a different
# accelerator, and reports keyed by name would silently merge the two. We
# refuse such a pair (naming both files) rather than invent a suffix: the
# name is what every table and figure prints, so the user should choose it.

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_path(value: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """An accelerator argument as a file path: a bare name (no ``.yaml``, no ``/``) means
    ``configs/<name>.yaml`` of this project; other paths are relative to ``base`` (default: cwd)."""
    text = os.fspath(value)
    if text and not text.endswith((".yaml", ".yml")) and "/" not in text and os.sep not in text:
        path = CONFIG_DIR / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise InputError(f"{text}: unknown accelerator; expected one of {', '.join(known)} (configs/) or a "
                             f"YAML path{_did_you_mean(text, known)}")
        return str(path)
    path = Path(text)
    return str(path if path.is_absolute() or base is None else Path(base) / path)


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of an accelerator file's bytes (its identity together with its name)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_distinct(paths, base: str | os.PathLike | None = None) -> list[NPUSpec]:
    """Resolve, load and validate accelerator files; one `NPUSpec` per distinct accelerator.

    The same content twice (one path repeated, or a byte-identical copy) is one
    accelerator. Two files declaring the same ``name:`` with different content
    are an `InputError` naming both files. Every file's problems are reported.
    """
    resolved = [resolve_path(p, base) for p in paths]
    specs = load(resolved)
    out, seen = [], {}          # name -> (path, digest)
    for path, spec in zip(resolved, specs):
        digest = content_digest(path)
        if spec.name in seen:
            first, first_digest = seen[spec.name]
            if first_digest != digest:
                raise InputError(f"{path}: name: {spec.name!r} is already the name of {first}, whose content "
                                 "differs; give one of them another name")
            continue
        seen[spec.name] = (path, digest)
        out.append(spec)
    return out
