"""What the main job prints and writes besides JSON: the console summary, the CSV rows, and
the record of each accelerator (file, content hash, every parameter) that the JSON carries.

Part of the CLI's composition root (imports hwmodels lazily).
"""

from __future__ import annotations

import csv
import io

__all__ = ["print_summary", "summary_csv", "accelerator_record", "CSV_COLUMNS"]


def accelerator_record(npu) -> dict:
    """Every parameter of an accelerator, with its file and content hash."""
    import dataclasses

    from hwmodels.load import content_digest

    return {"file": npu.source, "sha256": content_digest(npu.source), "spec": dataclasses.asdict(npu)}


CSV_COLUMNS = ("model", "checkpoint", "data", "images", "recipe", "w_bits", "a_bits", "calib_images_used",
               "top1_fp32", "top1_fakequant_integer", "top1_fakequant_float_nonlinear", "top1_simulator",
               "bit_exact_images", "accumulator_overflows", "macs_per_image", "bops_per_image",
               "grouping_bops_per_image", "accelerator", "accelerator_file", "accelerator_sha256", "cycles",
               "latency_ms", "images_per_s", "energy_uj", "offchip_mb", "pe_utilisation", "tool_version",
               "git_revision", "created_utc")


def summary_csv(s: dict) -> str:
    """The run summary as CSV text: one row per accelerator, or one row without accelerators."""
    base = {"model": s["model"], "checkpoint": s["checkpoint"] or "", "data": s["data"], "images": s["images"],
            "recipe": s["recipe"]["label"], "w_bits": s["recipe"]["w_bits"], "a_bits": s["recipe"]["a_bits"],
            "calib_images_used": s["calib_images_used"],
            **{f"top1_{k}": f"{v:.4f}" for k, v in s["top1"].items()},
            "bit_exact_images": s["bit_exact_images"],
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


def print_summary(s: dict, label: str) -> None:
    t = s["top1"]
    print(f"model {s['model']}  data {s['data']} ({s['images']} images)  recipe {label}  "
          f"(calibrated on {s['calib_images_used']})")
    print(f"  fp32 top-1                          {t['fp32']:6.2f}%")
    print(f"  fake-quant top-1 (integer-only)     {t['fakequant_integer']:6.2f}%")
    print(f"  fake-quant top-1 (float nonlinear)  {t['fakequant_float_nonlinear']:6.2f}%")
    print(f"  integer simulator top-1             {t['simulator']:6.2f}%")
    print(f"  bit-exact: {s['bit_exact_images']}/{s['images']} images"
          + ("" if s["first_mismatch"] is None else f"  (first mismatch: {s['first_mismatch']})"))
    ov = sum(s["accumulator_overflows"].values())
    print(f"  accumulator overflows (saturated): {ov}"
          + ("" if not ov else f" in {', '.join(sorted(s['accumulator_overflows']))}"))
    grouping = s.get("grouping_bops_per_image", 0)
    print(f"  MACs/image {s['macs_per_image'] / 1e6:.3f} M   BOPs/image {s['bops_per_image'] / 1e9:.3f} G"
          + (f" + grouping overhead {grouping / 1e9:.3f} G" if grouping else ""))
    e = s["executor_s"]
    print(f"  wall time: {s['wall_time_s']:.1f} s (calibration {s['calibration_s']:.1f} s, fp32 {e['fp32']:.2f} s, "
          f"fake-quant {e['fakequant_integer']:.2f} s, simulator {e['simulator']:.2f} s)")
