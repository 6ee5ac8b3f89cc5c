"""The ablation summary: means over seeds and seed-paired differences from the default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.ablation import summarise, to_markdown


def write_variant(root: Path, name: str, acc: dict[int, float]) -> None:
    for seed, a in acc.items():
        metrics = {"acc2_non0": a, "f1_non0": a - 0.01, "ece": 0.05}
        split = {"missing_rate": {"0.0": metrics, "0.5": metrics}, "subsets": {"T": metrics}}
        d = root / name / f"seed_{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"valid": split, "test": split}))
    (root / name / "metrics.json").write_text("{}")


def test_paired_differences_and_their_standard_error(tmp_path):
    write_variant(tmp_path, "default", {1: 0.70, 2: 0.74, 3: 0.72})
    write_variant(tmp_path, "other", {1: 0.71, 2: 0.76, 3: 0.72, 4: 0.99})  # seed 4 has no partner
    write_variant(tmp_path, "unfinished", {1: 0.5})
    (tmp_path / "unfinished" / "metrics.json").unlink()
    df = summarise(tmp_path, ["default", "other", "unfinished"]).set_index("variant")
    assert list(df.index) == ["default", "other"]
    diff = np.array([0.01, 0.02, 0.0])
    assert df.loc["other", "d_acc2_rates"] == pytest.approx(diff.mean())
    assert df.loc["other", "d_acc2_rates_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert df.loc["other", "d_valid_f1_rates"] == pytest.approx(diff.mean())
    assert df.loc["other", "acc2_rates"] == pytest.approx(np.mean([0.71, 0.76, 0.72, 0.99]))
    assert df.loc["default", "d_acc2_rates"] == 0.0
    md = to_markdown(df.reset_index())
    assert "| Δ valid F1 rates | Δ Acc-2 rates |" in md and "+1.0 ± 0.6 |" in md
