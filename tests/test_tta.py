"""Test-time adaptation (training/tta.py): what it may change, episodic reset, entropy, missing
modalities, the --tta none path, and clear refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from datasets import MultimodalTensorDataset, make_synthetic
from modules.presence import MODALITIES
from modules.registry import create_model
from tests.helpers import tiny_args, tiny_pickle
from training.cli import main as cli_main
from training.config import Config
from training.evaluate import Evaluator
from training.tta import Tent, build_tta, prediction_entropy, tta_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = (12, 5, 8)
# (model, --tta_params, other config): every registered model with normalisation layers
CASES = [("attention_robust_v4", "norm", {}), ("attention_robust_v4", "fusion", {}),
         ("attention_robust_v4", "norm+fusion", {"encoder": "lstm"}), ("ef_lstm", "norm", {}),
         ("lf_dnn", "norm", {}), ("tfn", "norm", {})]


@pytest.fixture(scope="module")
def test_split():
    return make_synthetic(seed=1, n_train=8, n_valid=8, n_test=40, seq_len=6, dims=DIMS).splits["test"]


def make_model(name: str, **kw):
    torch.manual_seed(0)
    cfg = Config(model=name, hidden_dim=16, num_heads=2, **kw)
    return create_model(name, cfg, dict(zip(MODALITIES, DIMS))).eval()


def encoded(model, split, rows: range) -> dict[str, torch.Tensor]:
    batch = MultimodalTensorDataset(split)[np.arange(rows.start, rows.stop)]
    with torch.no_grad():
        return model.encode(batch)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name,which,kw", CASES)
def test_only_the_chosen_parameters_move_and_are_reset_after_the_batch(name, which, kw, test_split, monkeypatch):
    model = make_model(name, **kw)
    tent = Tent(model, which, steps=3, lr=1e-2)
    chosen = set(tent.params)
    trained = snapshot(model)
    adapted = []
    fuse = model.fuse

    def recording_fuse(states, presence):
        if not torch.is_grad_enabled():  # the final prediction, after the adaptation steps
            adapted.append(snapshot(model))
        return fuse(states, presence)

    monkeypatch.setattr(model, "fuse", recording_fuse)
    rows = range(0, 16)
    presence = torch.ones(16, 3, dtype=torch.bool)
    presence[::2, 1] = False
    tent(encoded(model, test_split, rows), presence, test_split, rows)
    assert len(adapted) == 1
    for n, value in adapted[0].items():
        if n not in chosen:
            assert torch.equal(value, trained[n]), n
    assert any(not torch.equal(adapted[0][n], trained[n]) for n in chosen)
    for n, p in model.named_parameters():  # episodic: back at the trained weights
        assert torch.equal(p, trained[n]), n
        assert p.requires_grad


def test_the_sets_hold_what_they_name() -> None:
    model = make_model("attention_robust_v4")
    norm, fusion = tta_parameters(model, "norm"), tta_parameters(model, "fusion")
    assert norm and all(n.endswith(("weight", "bias")) for n in norm)
    assert any(n.startswith("encoders.") for n in norm) and not any(n.startswith("fusion.") for n in norm)
    assert set(fusion) == {n for n, _ in model.fusion.named_parameters(prefix="fusion")}
    assert set(tta_parameters(model, "norm+fusion")) == set(norm) | set(fusion)


def test_entropy_falls_on_a_batch(test_split) -> None:
    for name, which in (("attention_robust_v4", "norm"), ("attention_robust_v4", "fusion"), ("lf_dnn", "norm")):
        model = make_model(name)
        rows = range(0, 32)
        states = encoded(model, test_split, rows)
        presence = torch.ones(32, 3, dtype=torch.bool)
        with torch.no_grad():
            before = prediction_entropy(model.fuse(states, presence)["logits"]).item()
        out = Tent(model, which, steps=10, lr=5e-2)(states, presence, test_split, rows)
        after = prediction_entropy(out["logits"]).item()
        assert after < before - 1e-4, (name, which, before, after)


@pytest.mark.parametrize("name,which,kw", CASES)
def test_a_missing_modality_cannot_change_an_adapted_output(name, which, kw, test_split) -> None:
    model = make_model(name, **kw)
    tent = Tent(model, which, steps=2, lr=1e-2)
    rows = range(0, 24)
    for missing in range(3):
        presence = torch.ones(24, 3, dtype=torch.bool)
        presence[:, missing] = False
        m = MODALITIES[missing]
        garbage = dataclasses.replace(test_split, **{m: (100 * np.random.default_rng(missing).standard_normal(
            test_split.features(m).shape)).astype(np.float32)})
        zeroed = dataclasses.replace(test_split, **{m: np.zeros_like(test_split.features(m))})
        a = tent(encoded(model, zeroed, rows), presence, zeroed, rows)
        b = tent(encoded(model, garbage, rows), presence, garbage, rows)
        assert torch.equal(a["score"], b["score"]), (name, which, m)
        assert torch.equal(a["logits"], b["logits"]), (name, which, m)


def test_tta_none_leaves_the_sweep_bitwise_unchanged(test_split) -> None:
    model = make_model("attention_robust_v4")
    assert build_tta(Config(), model) is None
    evaluator = Evaluator(model, torch.device("cpu"), 16, "regression", 2)
    args = (test_split, [0.0, 0.5], [0.0])
    before = evaluator.sweep(*args)
    tent = build_tta(Config(tta="tent", tta_steps=2, tta_lr=1e-2), model)
    adapted = dataclasses.replace(evaluator, tta=tent).sweep(*args)
    after = evaluator.sweep(*args)
    for key in ("preds", "probs", "subset_preds"):
        assert torch.equal(torch.from_numpy(before["arrays"][key]), torch.from_numpy(after["arrays"][key])), key
        assert not np.array_equal(before["arrays"][key], adapted["arrays"][key]), key
    # the un-adapted sweep is the model's own output, batch by batch
    states = evaluator.encode(test_split)
    with torch.no_grad():
        full = model.fuse(states, torch.ones(test_split.n, 3, dtype=torch.bool))["score"].numpy()
    assert np.array_equal(before["arrays"]["preds"][0], full)


def test_an_adaptation_that_diverges_is_one_error_naming_the_step_size(test_split) -> None:
    # was: "predictions contain NaN or Inf" from the metrics, with a traceback (e.g. --tta_lr 1e30)
    from training.errors import ConfigError

    model = make_model("attention_robust_v4")
    rows, presence = range(0, 16), torch.ones(16, 3, dtype=torch.bool)
    trained = snapshot(model)
    with pytest.raises(ConfigError, match=r"made the predictions NaN or Inf \(--tta_lr 1e\+30.*lower --tta_lr"):
        Tent(model, "norm+fusion", steps=3, lr=1e30)(encoded(model, test_split, rows), presence, test_split, rows)
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())  # the weights are put back
    out = Tent(model, "norm+fusion", steps=3, lr=1e-2)(encoded(model, test_split, rows), presence, test_split, rows)
    assert torch.isfinite(out["score"]).all()


def test_adaptation_is_deterministic(test_split) -> None:
    model = make_model("attention_robust_v4")
    evaluator = Evaluator(model, torch.device("cpu"), 16, "regression", 2, tta=Tent(model, "norm+fusion", steps=2,
                                                                                  lr=1e-2))
    a, b = evaluator.sweep(test_split, [0.3], []), evaluator.sweep(test_split, [0.3], [])
    assert np.array_equal(a["arrays"]["preds"], b["arrays"]["preds"])


@pytest.mark.parametrize("name,which,kw", [("lf_dnn", "fusion", {}), ("tfn", "norm+fusion", {}),
                                           ("attention_robust_v4", "fusion", {"use_gated_fusion": False})])
def test_a_model_without_the_chosen_parameters_is_refused(name, which, kw) -> None:
    with pytest.raises(ValueError, match="has no learned fusion gate"):
        Tent(make_model(name, **kw), which)


@pytest.mark.slow
def test_cli_refuses_before_training_and_runs_with_tent(tmp_path, capsys) -> None:
    data = tiny_pickle(tmp_path / "tiny.pkl")
    out = tmp_path / "bad"
    assert cli_main(tiny_args(data, out, "--model", "lf_dnn", "--tta", "tent", "--tta_params", "fusion")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no learned fusion gate" in err[0]
    assert not list(out.glob("seed_*/*.pt"))
    good = tmp_path / "tent"
    assert cli_main(tiny_args(data, good, "--tta", "tent", "--tta_steps", "2")) == 0
    assert (good / "metrics.json").exists()
