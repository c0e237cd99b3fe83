"""What the main job prints and writes besides JSON: the console summary, the CSV rows, and
the record of each accelerator (file, content hash, every parameter) that the JSON carries.

Part of the CLI's composition root (imports hwmodels lazily).
"""

from __future__ import annotations

import csv
import io

__all__ = ["print_summary", "summary_csv", "accelerator_record", "significance_record", "CSV_COLUMNS"]


def accelerator_record(npu) -> dict:
    """Every parameter of an accelerator, with its file and content hash."""
    import dataclasses

    from hwmodels.load import content_digest

    return {"file": npu.source, "sha256": content_digest(npu.source), "spec": dataclasses.asdict(npu)}


CSV_COLUMNS = ("model", "checkpoint", "data", "images", "recipe", "w_bits", "a_bits", "calib_images_used",
               "top1_fp32", "top1_fakequant_integer", "top1_fakequant_float_nonlinear", "top1_simulator",
               "bit_exact_images", "reference", "reference_images", "accumulator_overflows", "macs_per_image", "bops_per_image",
               "grouping_bops_per_image", "accelerator", "accelerator_file", "accelerator_sha256", "cycles",
               "latency_ms", "images_per_s", "energy_uj", "offchip_mb", "pe_utilisation", "tool_version",
               "git_revision", "created_utc")


def summary_csv(s: dict) -> str:
    """The run summary as CSV text: one row per accelerator, or one row without accelerators."""
    base = {"model": s["model"], "checkpoint": s["checkpoint"] or "", "data": s["data"], "images": s["images"],
            "recipe": s["recipe"]["label"], "w_bits": s["recipe"]["w_bits"], "a_bits": s["recipe"]["a_bits"],
            "calib_images_used": s["calib_images_used"],
            **{f"top1_{k}": "" if v is None else f"{v:.4f}" for k, v in s["top1"].items()},
            "bit_exact_images": "" if s["bit_exact_images"] is None else s["bit_exact_images"],
            "reference": s["reference"]["mode"] if "reference" in s else "",
            "reference_images": s["reference"]["checked_images"] if "reference" in s else "",
            "accumulator_overflows": sum(s["accumulator_overflows"].values()),
            "macs_per_image": s["macs_per_image"], "bops_per_image": s["bops_per_image"],
            "grouping_bops_per_image": s["grouping_bops_per_image"],
            "tool_version": s["tool"]["version"], "git_revision": s["tool"].get("git_revision", ""),
            "created_utc": s["tool"]["created_utc"]}
    rows = []
    for hw in s.get("hardware") or [None]:
        row = dict(base)
        if hw is not None:
            c = hw["per_image"]
            row.update({"accelerator": hw["npu"]["name"], "accelerator_file": hw["accelerator"]["file"],
                        "accelerator_sha256": hw["accelerator"]["sha256"], "cycles": f"{c['cycles']:.0f}",
                        "latency_ms": f"{c['latency_ms']:.6g}", "images_per_s": f"{c['images_per_s']:.6g}",
                        "energy_uj": f"{c['energy_uj']:.6g}", "offchip_mb": f"{c['offchip_mb']:.6g}",
                        "pe_utilisation": f"{c['pe_utilisation']:.4f}"})
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


_SUMMARY_KEYS = {"fp32": "fp32", "fq_int": "fakequant_integer", "fq_float": "fakequant_float_nonlinear",
                 "sim": "simulator"}


def significance_record(correct: dict) -> dict:
    """``top1_ci``: the exact 95% interval of every executor's top-1 (`simulator.significance`), and
    ``simulator_vs_fp32``: McNemar's exact test of the simulator against fp32 on the same images.
    ``correct``: executor key (fp32/fq_int/fq_float/sim) -> per-image bool array."""
    from simulator.significance import accuracy_interval, paired_test

    ci = {_SUMMARY_KEYS[k]: accuracy_interval(int(c.sum()), len(c)).as_dict() for k, c in correct.items()
          if len(c)}
    out = {"top1_ci": ci}
    if len(correct["sim"]):
        out["simulator_vs_fp32"] = paired_test(correct["sim"], correct["fp32"]).as_dict()
    return out


def _ci(s: dict, key: str) -> str:
    c = s.get("top1_ci", {}).get(key)
    return "" if c is None else f"  [{100 * c['ci_low']:6.2f}, {100 * c['ci_high']:6.2f}] 95% CI"


def gemm_line(g: dict, threads: dict | None = None) -> str:
    """``simulator GEMMs: int_mm (9 shape classes), numba (1); auto, measured ...; threads ...``."""
    counts: dict[str, int] = {}
    for rec in g["classes"].values():
        counts[rec["backend"]] = counts.get(rec["backend"], 0) + 1
    used = ", ".join(f"{b} ({n} shape class{'es' if n > 1 else ''})" for b, n in sorted(counts.items(),
                                                                                       key=lambda kv: -kv[1]))
    if g["requested"] == "auto":
        how = "measured now" if any(r["source"] == "measured" for r in g["classes"].values()) else "cached"
        how = f"auto, {how}" + (f" in {g['cache']}" if g.get("cache") else "")
    else:
        how = f"--backend {g['requested']}"
    th = (f"; threads: torch {threads['torch']}, numba {threads['numba']} ({threads.get('numba_layer', '?')})"
          if threads else "")
    return f"simulator GEMMs: {used or 'none'} ({how}){th}"


def _reference_note(s: dict) -> str:
    """Which images the fake-quant reference ran on, when not all of them (`simulator.evaluation`)."""
    r = s.get("reference")
    if r is None or r["checked_images"] == r["of_images"]:
        return ""
    return f"  ({r['checked_images']} sampled images of {r['of_images']})" if r["checked_images"] else ""


def _top1_line(s: dict, title: str, key: str) -> str:
    v = s["top1"][key]
    if v is None:
        return f"  {title:<36}not run (--reference none)"
    return f"  {title:<36}{v:6.2f}%{_ci(s, key)}" + (_reference_note(s) if key.startswith("fakequant") else "")


def _bit_exact_line(s: dict) -> str:
    r = s.get("reference") or {"checked_images": s["images"], "of_images": s["images"], "mode": "full"}
    if s["bit_exact_images"] is None:
        return "  bit-exact: not checked (--reference none: the fake-quant reference did not run)"
    if r["checked_images"] == r["of_images"]:
        text = f"  bit-exact: {s['bit_exact_images']}/{r['checked_images']} images"
    else:
        text = (f"  bit-exact: {s['bit_exact_images']}/{r['checked_images']} sampled images (of {r['of_images']}; "
                f"--reference sample, seed {r['sample_seed']}; --reference full checks every image)")
    return text + ("" if s["first_mismatch"] is None else f"  (first mismatch: {s['first_mismatch']})")


def _wall_line(s: dict) -> str:
    e = s["executor_s"]
    since = s.get("since_process_start_s")
    return (f"  wall time: {s['wall_time_s']:.1f} s in-process"
            + ("" if since is None else f", {since:.1f} s since the interpreter started")
            + f" (calibration {s['calibration_s']:.1f} s, fp32 {e['fp32']:.2f} s, "
              f"fake-quant {e['fakequant_integer']:.2f} + {e['fakequant_float_nonlinear']:.2f} s, "
              f"simulator {e['simulator']:.2f} s)")


def print_summary(s: dict, label: str) -> None:
    print(f"model {s['model']}  data {s['data']} ({s['images']} images)  recipe {label}  "
          f"(calibrated on {s['calib_images_used']})")
    for title, key in (("fp32 top-1", "fp32"), ("fake-quant top-1 (integer-only)", "fakequant_integer"),
                       ("fake-quant top-1 (float nonlinear)", "fakequant_float_nonlinear"),
                       ("integer simulator top-1", "simulator")):
        print(_top1_line(s, title, key))
    if "simulator_vs_fp32" in s:
        m = s["simulator_vs_fp32"]
        print(f"  simulator vs fp32 (McNemar exact, same images): right only in simulator "
              f"{m['a_only_correct']}, only in fp32 {m['b_only_correct']}, p = {m['p_value']:.3g}"
              f" ({'significant' if m['significant'] else 'not significant'} at 0.05)")
    print(_bit_exact_line(s))
    ov = sum(s["accumulator_overflows"].values())
    print(f"  accumulator overflows (saturated): {ov}"
          + ("" if not ov else f" in {', '.join(sorted(s['accumulator_overflows']))}"))
    grouping = s.get("grouping_bops_per_image", 0)
    print(f"  MACs/image {s['macs_per_image'] / 1e6:.3f} M   BOPs/image {s['bops_per_image'] / 1e9:.3f} G"
          + (f" + grouping overhead {grouping / 1e9:.3f} G" if grouping else ""))
    if s.get("cluster"):
        c = s["cluster"]
        print(f"  evaluated on Dask {c['address']}: {c['workers']} workers, {c['shards']} shards")
    print(_wall_line(s))
    if s.get("gemm_backend"):
        print(f"  {gemm_line(s['gemm_backend'], s.get('threads'))}")
