"""The metrics against scikit-learn's own functions, one prediction at a time."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, mean_absolute_error

from training.metrics import ece_score, ece_twin_band, sentiment_metrics, sentiment_metrics_many


def _direct(pred: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict:
    """Each metric of one prediction from scikit-learn (and numpy where it has no function)."""
    non0 = y != 0
    return {"acc2_has0": accuracy_score(y >= 0, pred >= 0),
            "f1_has0": f1_score(y >= 0, pred >= 0, average="weighted", zero_division=0),
            "acc2_non0": accuracy_score(y[non0] > 0, pred[non0] > 0),
            "f1_non0": f1_score(y[non0] > 0, pred[non0] > 0, average="weighted", zero_division=0),
            "mae": mean_absolute_error(y, pred),
            "corr": np.corrcoef(pred, y)[0, 1] if pred.std() > 0 else 0.0,
            "acc7": accuracy_score(np.round(np.clip(y, -3, 3)), np.round(np.clip(pred, -3, 3))),
            "acc5": accuracy_score(np.round(np.clip(y, -2, 2)), np.round(np.clip(pred, -2, 2))),
            "brier": brier_score_loss(y[non0] > 0, p[non0]),
            "nll": log_loss(y[non0] > 0, p[non0], labels=[False, True]),
            "ece": ece_score(p[non0], y[non0] > 0),
            **dict(zip(("ece_twin_mean", "ece_twin_lo", "ece_twin_hi"), ece_twin_band(p[non0])))}


@pytest.mark.parametrize("case", ["random", "constant", "one_sign", "one_class_true", "certain"])
def test_metrics_of_many_predictions_equal_scikit_learn_one_prediction_at_a_time(case):
    rng = np.random.default_rng(len(case))
    n, k = 53, 4
    y = np.round(rng.normal(size=n) * 6) / 3  # MOSI-like: multiples of 1/3, some exactly 0
    preds = rng.normal(size=(k, n)) * 2
    p = rng.random((k, n))
    if case == "constant":  # no correlation, one predicted class
        preds[:] = 0.4
    elif case == "one_sign":  # every prediction negative
        preds = -np.abs(preds) - 0.1
    elif case == "one_class_true":  # every label >= 0: a class absent from the truth
        y = np.abs(y)
    elif case == "certain":  # probabilities of exactly 0 and 1, right and wrong (NLL clips them)
        p[:, :10] = 0.0
        p[:, 10:20] = 1.0
    many = sentiment_metrics_many(preds, y, p)
    assert len(many) == k
    for i in range(k):
        direct = _direct(preds[i], y, p[i])
        for name, value in direct.items():
            assert many[i][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (case, i, name)
        assert many[i]["n"] == n and many[i]["n_non0"] == int((y != 0).sum())
        assert sentiment_metrics(preds[i], y, p_pos=p[i]) == pytest.approx(many[i], rel=1e-12, abs=1e-12)


def test_metrics_refuse_bad_input_with_the_reason():
    y = np.array([1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        sentiment_metrics(np.array([0.1, np.nan, 0.2]), y)
    with pytest.raises(ValueError, match="differ in shape"):
        sentiment_metrics(np.zeros(2), y)
    with pytest.raises(ValueError, match="every label is 0"):
        sentiment_metrics(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="p_pos"):
        sentiment_metrics_many(np.zeros((2, 3)), y, np.zeros((1, 3)))
