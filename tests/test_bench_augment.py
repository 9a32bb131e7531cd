"""scripts/bench_augment.py: the quick run produces a complete, sane JSON report."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest


def positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.timeout(60)
def test_quick_run_reports_every_op_set_and_side(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 load_script: Callable[[str], ModuleType]) -> None:
    bench = load_script("bench_augment.py")
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--json", str(out)])

    report = json.loads(out.read_text())
    rows = report["results"]
    patches = set(bench.QUICK_PATCHES)
    for op_set in bench.OP_SETS:
        mine = [r for r in rows if r["op_set"] == op_set]
        assert {r["patch"] for r in mine} == patches, op_set
        for r in mine:
            for side in ("bgv2", "ours"):
                assert positive_finite(r[side]["ms_per_sample"]), (op_set, side, r[side])
                assert positive_finite(r[side]["ms_per_batch"]), (op_set, side, r[side])
                assert r[side]["ms_per_batch"] == pytest.approx(r[side]["ms_per_sample"] * r["batch"])
            assert positive_finite(r["ratio"])
            assert r["ratio"] == pytest.approx(r["bgv2"]["ms_per_batch"] / r["ours"]["ms_per_batch"])
    assert report["machine"]["cpu_count"] >= 1
    assert "| op set |" in capsys.readouterr().out  # the Markdown table went to stdout
