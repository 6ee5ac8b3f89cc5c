"""Calibration stays honest: fitted on valid only, and it lowers ECE where the model is over-confident."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_args, tiny_pickle
from training.calibration import Calibration, fit_score_affine, fit_temperature
from training.cli import main
from training.evaluate import softmax
from training.metrics import ece_score


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits 4x too sharp for labels drawn from the true (unsharpened) probabilities."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.5, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true))).astype(np.int64)
    return np.stack([np.zeros(n), 4.0 * true], axis=1), labels


def test_fit_temperature_recovers_the_sharpening():
    logits, labels = _overconfident(20_000, 0)
    assert fit_temperature(logits, labels) == pytest.approx(4.0, rel=0.08)


def test_temperature_fitted_on_valid_lowers_ece_on_held_out_data():
    valid_logits, valid_labels = _overconfident(2000, 1)
    test_logits, test_labels = _overconfident(2000, 2)
    t = fit_temperature(valid_logits, valid_labels)
    before = ece_score(softmax(test_logits)[:, 1], test_labels == 1)
    after = ece_score(softmax(test_logits / t)[:, 1], test_labels == 1)
    assert before > 0.1 and after < before / 3


def test_score_affine_recovers_the_map_and_never_flips_the_sign():
    rng = np.random.default_rng(0)
    s = rng.normal(size=5000)
    a, b = fit_score_affine(s, 0.5 * s + 0.3 + rng.normal(0, 0.05, size=5000))
    assert a == pytest.approx(0.5, abs=0.01) and b == pytest.approx(0.3, abs=0.01)
    a, b = fit_score_affine(s, -s)  # anti-correlated: shrink to the mean, never invert
    assert a == 0.0 and b == pytest.approx(-s.mean(), abs=1e-12)


def test_calibration_applies_per_presence_pattern():
    cal = Calibration()
    cal.temperatures[0] = 2.0  # pattern of T alone
    cal.score_affine[1] = (0.0, 0.7)  # pattern of A alone
    presence = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=bool)
    score, logits = cal.apply(np.array([1.0, 1.0, 1.0]), np.ones((3, 2)) * [[0, 2]], presence)
    assert score.tolist() == [1.0, 0.7, 1.0]
    assert logits[:, 1].tolist() == [1.0, 2.0, 2.0]
    back = Calibration.from_state_dict(cal.state_dict())
    assert np.array_equal(back.temperatures, cal.temperatures)
    assert np.array_equal(back.score_affine, cal.score_affine)


@pytest.mark.slow
def test_calibration_is_fitted_on_valid_only(tmp_path):
    """Changing the test split's labels and features leaves the saved calibration unchanged."""
    def scramble_test(d):
        rng = np.random.default_rng(9)
        d["test"]["regression_labels"] = rng.uniform(-3, 3, len(d["test"]["regression_labels"])).astype(np.float32)
        d["test"]["text"] = d["test"]["text"][::-1].copy()

    a = tiny_pickle(tmp_path / "a.pkl")
    b = tiny_pickle(tmp_path / "b.pkl", edit=scramble_test)
    saved = []
    for path, name in ((a, "ra"), (b, "rb")):
        assert main(tiny_args(path, tmp_path / name)) == 0
        ck = torch.load(tmp_path / name / "seed_7" / "best.pt", weights_only=True)
        saved.append(ck["calibration"])
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["calibration"][0]["temperatures"] == ck["calibration"]["temperatures"].tolist()
    for key in ("temperatures", "score_affine"):
        assert torch.equal(saved[0][key], saved[1][key])
