"""Accelerator YAML loading: valid configs, one clear line per error class, fuzz."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hwmodels
from hwmodels.load import SpecError, parse
from hwmodels.spec import NPUSpec
from simulator.errors import InputError
from synthetic_trace import tiny_npu_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "configs" / f for f in ("npu_int8.yaml", "npu_w4a8.yaml", "mcu_int8.yaml")]
NPU_INT8 = ROOT / "configs" / "npu_int8.yaml"


def _base() -> dict:
    return yaml.safe_load(NPU_INT8.read_text())


def _error(data, source="configs/npu.yaml") -> str:
    with pytest.raises(InputError) as e:
        parse(data, source)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{source}: ")
    return msg


# ------------------------------------------------------------- valid files


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_configs_load(path):
    npu = hwmodels.load(path)
    assert isinstance(npu, NPUSpec)
    assert npu.source == str(path)
    assert len(npu.memories) == 3
    assert {"softmax", "gelu", "layernorm", "requant"} <= {s.name for s in npu.sfus}
    assert "Where the numbers come from" in path.read_text()


def test_bundled_values_and_unit_conversion():
    npu, w4a8, mcu = hwmodels.load([NPU_INT8, ROOT / "configs/npu_w4a8.yaml",
                                    ROOT / "configs/mcu_int8.yaml"])
    assert (npu.pe_array.rows, npu.pe_array.cols, npu.pe_array.dataflow) == (32, 32, "weight_stationary")
    assert npu.global_buffer.size_bytes == 1 << 20
    assert npu.offchip.bandwidth_bytes_per_cycle == pytest.approx(17.0)  # 17 GB/s at 1 GHz
    assert mcu.offchip.bandwidth_bytes_per_cycle == pytest.approx(2.0)  # 0.4 GB/s at 200 MHz
    assert [(p.label, p.macs_per_pe_per_cycle) for p in w4a8.pe_array.precisions] == [
        ("W8A8", 1), ("W4A8", 2), ("W4A4", 4)]
    assert mcu.global_buffer.size_bytes == 256 * 1024
    assert npu.pe_array.fold_overlap == "per_fold"


def test_defaults_filled():
    d = tiny_npu_dict()
    del d["double_buffering"], d["static_power_mw"], d["pe_array"]["fold_overlap"]
    del d["pe_array"]["acc_bits"]
    npu = parse(d)
    assert npu.double_buffering is True and npu.static_power_mw == 0.0
    assert npu.pe_array.fold_overlap == "per_fold" and npu.pe_array.acc_bits == 32
    assert npu.sfu("gelu").cycles_per_row == 0.0 and npu.sfu("gelu").energy_per_element_pj == 0.0


def test_precision_mode_choice():
    npu = hwmodels.load(ROOT / "configs/npu_w4a8.yaml")
    assert npu.mode_for(8, 8).label == "W8A8"
    assert npu.mode_for(4, 8).label == "W4A8"
    assert npu.mode_for(4, 6).label == "W4A8"
    assert npu.mode_for(6, 6).label == "W8A8"
    assert npu.mode_for(3, 2).label == "W4A4"
    assert npu.mode_for(8, 4).label == "W8A8"
    assert npu.mode_for(16, 8) is None


# ------------------------------------------------------------ error classes


def test_style_guide_example_exactly():
    d = _base()
    d["memories"]["sram"]["size_bytes"] = -4
    assert _error(d) == "configs/npu.yaml: memories.sram.size_bytes: must be a positive int, got -4"


def _mut(path, value):
    def apply(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return apply


CASES = {
    "unknown key": (_mut(["pe_array", "dataflw"], "weight_stationary"),
                    ["pe_array.dataflw: unknown key (did you mean 'dataflow'?)"]),
    "unknown top key": (_mut(["clock_ghz"], 1.0),
                        ["clock_ghz: unknown key (did you mean 'clock_mhz'?)"]),
    "missing key": (_mut(["clock_mhz"], KeyError), ["clock_mhz: missing"]),
    "missing nested": (_mut(["memories", "dram", "read_energy_pj_per_byte"], KeyError),
                       ["memories.dram.read_energy_pj_per_byte: missing"]),
    "string for int": (_mut(["pe_array", "rows"], "32"),
                       ["pe_array.rows: must be a positive int, got '32'"]),
    "bool for int": (_mut(["pe_array", "cols"], True),
                     ["pe_array.cols: must be a positive int, got True"]),
    "float for int": (_mut(["memories", "sram", "size_bytes"], 1.5),
                      ["memories.sram.size_bytes: must be a positive int, got 1.5"]),
    "zero size": (_mut(["memories", "dram", "size_bytes"], 0),
                  ["memories.dram.size_bytes: must be a positive int, got 0"]),
    "negative energy": (_mut(["memories", "sram", "read_energy_pj_per_byte"], -1),
                        ["memories.sram.read_energy_pj_per_byte: must be a number >= 0, got -1"]),
    "nan clock": (_mut(["clock_mhz"], math.nan), ["clock_mhz: must be a positive number, got nan"]),
    "bad enum": (_mut(["pe_array", "dataflow"], "weight_stationery"),
                 ["pe_array.dataflow: must be one of weight_stationary, output_stationary, "
                  "input_stationary, got 'weight_stationery' (did you mean 'weight_stationary'?)"]),
    "bad fold_overlap": (_mut(["pe_array", "fold_overlap"], "pipeline"),
                         ["pe_array.fold_overlap: must be one of per_fold, pipelined, got 'pipeline'"]),
    "bits out of range": (_mut(["pe_array", "precisions", 0, "w_bits"], 64),
                          ["pe_array.precisions[0].w_bits: must be an int in 1..32, got 64"]),
    "precisions not list": (_mut(["pe_array", "precisions"], {"w_bits": 8}),
                            ["pe_array.precisions: must be a non-empty list of modes"]),
    "empty precisions": (_mut(["pe_array", "precisions"], []),
                         ["pe_array.precisions: must be a non-empty list of modes, got []"]),
    "section not mapping": (_mut(["pe_array"], [32, 32]), ["pe_array: must be a mapping, got [32, 32]"]),
    "both bandwidths": (_mut(["memories", "dram", "bandwidth_bytes_per_cycle"], 17),
                        ["memories.dram: give exactly one of bandwidth_bytes_per_cycle or bandwidth_gb_per_s"]),
    "no bandwidth": (_mut(["memories", "sram", "bandwidth_bytes_per_cycle"], KeyError),
                     ["memories.sram: give exactly one of"]),
    "too few levels": (lambda d: d["memories"].pop("sram") and d["memories"].pop("regs"),
                       ["memories: must list 2 or 3 levels"]),
    "missing sfu": (_mut(["sfus", "softmax"], KeyError), ["sfus.softmax: missing"]),
    "unknown sfu": (_mut(["sfus", "softmx"], {"lanes": 1, "cycles_per_element": 1}),
                    ["sfus.softmx: unknown unit (did you mean 'softmax'?)"]),
    "local too small": (_mut(["memories", "regs", "size_bytes"], 1024),
                        ["memories.regs.size_bytes: the PE-local level must hold", ">= 5120"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_class_one_line_names_field(case):
    mutate, expected = CASES[case]
    d = _base()
    mutate(d)
    msg = _error(d)
    for part in expected:
        assert part in msg


def test_duplicate_precision_mode():
    d = _base()
    d["pe_array"]["precisions"].append(dict(d["pe_array"]["precisions"][0]))
    assert "pe_array.precisions[1]: duplicate mode W8A8" in _error(d)


def test_all_problems_collected_in_one_line():
    d = _base()
    d["memories"]["sram"]["size_bytes"] = -4
    d["pe_array"]["rows"] = 0
    del d["name"]
    with pytest.raises(SpecError) as e:
        parse(d, "x.yaml")
    assert len(e.value.problems) == 3
    assert str(e.value).count("; ") == 2


def test_top_level_not_mapping():
    assert _error([1, 2]) == "configs/npu.yaml: top level: must be a mapping, got [1, 2]"


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml: no such accelerator file"):
        hwmodels.load(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="empty file"):
        hwmodels.load(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npe_array: {rows: 4,\n")
    with pytest.raises(InputError, match=r"bad\.yaml: invalid YAML at line \d+"):
        hwmodels.load(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text(NPU_INT8.read_text() + "clock_mhz: 500\n")
    with pytest.raises(InputError, match=r"dup\.yaml: invalid YAML at line \d+.*duplicate key 'clock_mhz'"):
        hwmodels.load(dup)
    with pytest.raises(InputError, match="is a directory"):
        hwmodels.load(tmp_path)


def test_several_files_report_every_broken_one(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for p, key in ((a, "rows"), (b, "cols")):
        d = _base()
        d["pe_array"][key] = -1
        p.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError) as e:
        hwmodels.load([a, NPU_INT8, b])
    msg = str(e.value)
    assert "a.yaml: pe_array.rows" in msg and "b.yaml: pe_array.cols" in msg and "\n" not in msg
    assert [n.name for n in hwmodels.load([NPU_INT8, NPU_INT8])] == ["npu_int8", "npu_int8"]


# ---------------------------------------------------------------------- fuzz

_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["weight_stationary", "pipelined", "softmax", "8", ""]),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations_give_spec_or_input_error(data):
    d = copy.deepcopy(_base())
    for _ in range(data.draw(st.integers(1, 4))):
        paths = list(_paths(d))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace", "delete", "add_key"]))
        if not path:
            d = data.draw(_ANY) if op == "replace" else d
            if not isinstance(d, (dict, list)):
                break
            continue
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        if op == "replace":
            parent[path[-1]] = data.draw(_ANY)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][data.draw(st.one_of(st.text(max_size=6), st.integers()))] = data.draw(_ANY)
    try:
        npu = parse(d, "fuzz.yaml")
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml: ")
    else:
        assert isinstance(npu, NPUSpec)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_raw_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fz") / "n.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as e:
        hwmodels.load(p)
    assert "\n" not in str(e.value)
