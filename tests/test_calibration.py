"""Calibration stays honest: fitted on valid only, and it lowers ECE where the model is over-confident."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_args, tiny_pickle
from training.calibration import Calibration, fit_blend, fit_platt, fit_probabilities, fit_score_affine, fit_temperature
from training.cli import main
from training.evaluate import softmax
from training.metrics import ece_score, ece_twin_band


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
    for key in ("temperatures", "score_affine", "platt", "blend", "source"):
        assert torch.equal(saved[0][key], saved[1][key])


def test_platt_recovers_the_map_shrinks_small_patterns_and_never_flips():
    rng = np.random.default_rng(0)
    s = rng.normal(size=20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(1.5 * s - 0.4)))
    a, b = fit_platt(s, y)
    assert a == pytest.approx(1.5, rel=0.05) and b == pytest.approx(-0.4, abs=0.05)
    a, b = fit_platt(s, ~y)  # anti-correlated: the base rate, never an inverted map
    assert a == 0.0 and 1 / (1 + np.exp(-b)) == pytest.approx(1 - y.mean(), abs=0.01)

    def fitted(n: int) -> np.ndarray:
        """Pattern 0 (T) carries the signal, pattern 6 (TAV) is noise: n samples each."""
        r = np.random.default_rng(n)
        labels = r.choice([-2.0, 2.0], size=n)
        scores = np.stack([labels + r.normal(0, 1, n), r.normal(0, 1, n)])
        logits = np.zeros((2, n, 2))
        return fit_probabilities(Calibration(), scores, logits, labels, [0, 6]).platt

    big, small = fitted(4000), fitted(12)
    assert big[0, 0] > 1.5 and big[6, 0] < 0.15  # enough samples: each pattern keeps its own map
    assert small[6, 0] > 0.5  # few samples: the noise pattern borrows the pooled slope


def test_blend_weight_follows_the_better_probability():
    rng = np.random.default_rng(1)
    p = rng.random(5000)
    y = rng.random(5000) < p
    assert fit_blend(p, rng.random(5000), y) > 0.9
    assert fit_blend(rng.random(5000), p, y) < 0.1


def test_probability_sources_and_checkpoint_round_trip(tmp_path):
    cal = Calibration(temperatures=np.full(7, 2.0), platt=np.tile([1.0, 0.5], (7, 1)), blend=0.25, source="blend")
    score, logits = np.array([0.0, 1.0]), np.array([[0.0, 2.0], [0.0, -2.0]])
    presence = np.ones((2, 3), dtype=bool)
    p_score = 1 / (1 + np.exp(-(score + 0.5)))
    p_class = softmax(logits / 2.0)[:, 1]
    assert np.allclose(cal.positive_probability(score, logits, presence, "score"), p_score)
    assert np.allclose(cal.positive_probability(score, logits, presence, "class"), p_class)
    assert np.allclose(cal.positive_probability(score, logits, presence), 0.25 * p_score + 0.75 * p_class)
    torch.save({"calibration": cal.state_dict()}, tmp_path / "c.pt")
    for where in ("cpu", torch.device("cpu"), None):
        back = Calibration.from_state_dict(torch.load(tmp_path / "c.pt", weights_only=True,
                                                      map_location=where)["calibration"])
        assert back.source == "blend" and back.blend == 0.25 and np.array_equal(back.platt, cal.platt)
    old = {k: v for k, v in cal.state_dict().items() if k in ("temperatures", "score_affine")}
    assert Calibration.from_state_dict(old).source == "class"  # a checkpoint from before keeps the class head


def test_twin_band_holds_a_calibrated_predictors_ece_about_90_percent_of_the_time():
    inside, outside_overconfident = 0, 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        p = rng.beta(2, 2, size=160)
        y = rng.random(160) < p
        _, lo, hi = ece_twin_band(p)
        inside += lo <= ece_score(p, y) <= hi
        sharp = 1 / (1 + np.exp(-4 * np.log(p / (1 - p))))  # the same outcomes, claimed 4x too sharply
        outside_overconfident += ece_score(sharp, y) > ece_twin_band(sharp)[2]
    assert 0.80 <= inside / 200 <= 0.97
    assert outside_overconfident / 200 > 0.9


@pytest.mark.slow
def test_brier_nll_and_ensemble_equal_a_direct_computation_on_the_saved_predictions(tmp_path):
    data = tiny_pickle(tmp_path / "d.pkl")
    assert main(tiny_args(data, tmp_path / "r", "--seeds", "7", "8")) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    z = np.load(tmp_path / "r" / "predictions.npz")
    non0 = z["labels"] != 0
    y = (z["labels"][non0] > 0).astype(float)

    def direct(p: np.ndarray) -> tuple[float, float]:
        p = p[non0]
        return float(np.mean((p - y) ** 2)), float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    assert m["prediction"].endswith("class head with per-pattern temperature")  # the default
    for i, key in enumerate(["0.0", "0.3", "0.5"]):
        per_seed = [direct(z["p_pos"][s, i]) for s in range(2)]
        res, ens = m["results"]["missing_rate"][key], m["ensemble"]["missing_rate"][key]
        assert res["brier"] == pytest.approx(np.mean([b for b, _ in per_seed]), abs=1e-9)
        assert res["nll"] == pytest.approx(np.mean([n for _, n in per_seed]), abs=1e-9)
        brier, nll = direct(z["p_pos"][:, i].mean(0))  # the ensemble: the mean of the seeds' probabilities
        assert ens["brier"] == pytest.approx(brier, abs=1e-9) and ens["nll"] == pytest.approx(nll, abs=1e-9)
        acc = np.mean((z["preds"][:, i].mean(0)[non0] > 0) == (y > 0))
        assert ens["acc2_non0"] == pytest.approx(acc, abs=1e-9)
    # --eval_only on the run folder reports the same ensemble from the checkpoints
    assert main(["--eval_only", "--checkpoint", str(tmp_path / "r"), "--data_path", str(data), "--output_dir",
                 str(tmp_path / "e"), "--quiet", "--eval_missing_rates", "0.0", "0.3", "0.5",
                 "--eval_frame_missing_rates", "0.0"]) == 0
    e = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for key in ("0.0", "0.3", "0.5"):
        for k in ("brier", "nll", "acc2_non0"):
            assert e["ensemble"]["missing_rate"][key][k] == pytest.approx(m["ensemble"]["missing_rate"][key][k],
                                                                          abs=1e-6)


@pytest.mark.slow
def test_scrambled_test_labels_leave_calibration_and_predictions_unchanged(tmp_path):
    def scramble_labels(d):
        d["test"]["regression_labels"] = np.random.default_rng(3).permutation(d["test"]["regression_labels"])

    runs = []
    for name, edit in (("a", None), ("b", scramble_labels)):
        path = tiny_pickle(tmp_path / f"{name}.pkl", edit=edit)
        assert main(tiny_args(path, tmp_path / name, "--probability", "blend")) == 0
        ck = torch.load(tmp_path / name / "seed_7" / "best.pt", weights_only=True)
        runs.append((ck["calibration"], np.load(tmp_path / name / "predictions.npz")))
    (cal_a, npz_a), (cal_b, npz_b) = runs
    assert set(cal_a) == {"temperatures", "score_affine", "platt", "blend", "source"}
    for key in cal_a:
        assert torch.equal(cal_a[key], cal_b[key])
    for key in ("preds", "probs", "p_pos", "subset_preds", "subset_p_pos"):
        assert np.array_equal(npz_a[key], npz_b[key])
    assert not np.array_equal(npz_a["labels"], npz_b["labels"])
