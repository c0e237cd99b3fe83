"""The README's Python API example runs as written (paths resolved against the repository)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow   # the full digits test split through both executors
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = _api_block().replace('"configs/', f'"{ROOT}/configs/')
    assert "reference.quantize(" in code and "QuantizedGraph.load(" in code
    monkeypatch.chdir(tmp_path)                  # qg.save("digits_w8a8.npz") lands here
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert (tmp_path / "digits_w8a8.npz").is_file()
    accuracy = float(out.splitlines()[0])
    assert accuracy == pytest.approx(0.9889, abs=1e-4)      # README's static W8A8 row: 98.89%
    assert "per image" in out
