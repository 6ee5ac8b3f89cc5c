"""Baselines (ef_lstm, lf_dnn, tfn): they learn, masked modalities cannot act, shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import SUBSETS, make_loader, make_synthetic
from modules.ef_lstm import align_to_text, resample_to
from modules.losses import task_loss
from modules.registry import available_models, create_model
from tests.helpers import make_batch
from training.config import Config
from training.evaluate import Evaluator
from training.metrics import sentiment_metrics

BASELINES = ("ef_lstm", "lf_dnn", "tfn")
DIMS = {"text": 12, "audio": 5, "vision": 8}


def make(name: str, hidden: int = 16, dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, Config(model=name, hidden_dim=hidden, dropout=dropout), DIMS)


def test_baselines_are_registered():
    assert set(BASELINES) <= set(available_models())


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_learns_known_signal(name):
    data = make_synthetic(seed=3, n_train=480, n_valid=16, n_test=256, seq_len=8, dims=tuple(DIMS.values()))
    cfg = Config(model=name, hidden_dim=32, dropout=0.1)
    torch.manual_seed(0)
    model = create_model(name, cfg, data.dims)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):  # 8 epochs x 15 batches = 120 steps
        for b in make_loader(data.splits["train"], 32, shuffle=True, generator=gen):
            loss = sum(task_loss(cfg, model(b), b["labels"]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = data.splits["test"]
    evaluator = Evaluator(model, torch.device("cpu"), 64, "regression", 2)
    states = evaluator.encode(test)
    fused = evaluator.fuse(states, np.ones((test.n, 3), dtype=bool))
    m = sentiment_metrics(fused.score, test.labels)
    assert m["corr"] > 0.5 and m["acc2_non0"] > 0.7, m
    cls_acc = ((fused.logits.argmax(1) == 1) == (test.labels >= 0)).mean()
    assert cls_acc > 0.7, cls_acc


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("lens", [(7, 7, 7), (1, 1, 1)], ids=["aligned", "length1"])
def test_masked_modality_cannot_change_output(name, lens):
    model = make(name).eval()
    clean = make_batch(6, lens, DIMS, aligned=len(set(lens)) == 1, presence=False)
    for subset, pattern in SUBSETS.items():
        presence = torch.tensor(pattern).repeat(6, 1)
        garbage = dict(clean)
        zeroed = dict(clean)
        for i, m in enumerate(DIMS):
            if not pattern[i]:
                garbage[m] = 1e3 * torch.randn_like(clean[m])
                zeroed[m] = torch.zeros_like(clean[m])
        with torch.no_grad():
            outs = [model.fuse(model.encode(b), presence) for b in (clean, garbage, zeroed)]
        for key in ("score", "logits"):
            assert torch.equal(outs[0][key], outs[1][key]), (name, subset, key)
            assert torch.equal(outs[0][key], outs[2][key]), (name, subset, key)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("lens", [(7, 7, 7), (1, 1, 1), (7, 20, 15)], ids=["aligned", "length1", "unaligned"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_output_shapes(name, lens, train):
    model = make(name).train(train)
    b = make_batch(6, lens, DIMS, aligned=len(set(lens)) == 1, presence=False)
    presence = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    out = model.fuse(model.encode(b), presence)
    assert out["score"].shape == (6,) and out["logits"].shape == (6, 2)
    assert out["score"].abs().max() <= 3.0
    assert out["losses"] == {} and isinstance(out["diagnostics"], dict)
    if train:
        out["score"].sum().backward()


@pytest.mark.parametrize("name", BASELINES)
def test_all_missing_sample_raises(name):
    model = make(name).eval()
    b = make_batch(6, (7, 7, 7), DIMS, aligned=True, presence=False)
    presence = torch.ones(6, 3, dtype=torch.bool)
    presence[2] = False
    with pytest.raises(ValueError, match="no modality"):
        model.fuse(model.encode(b), presence)


@pytest.mark.parametrize("name", BASELINES)
def test_encode_does_not_read_presence(name):
    model = make(name).eval()
    b = make_batch(6, (7, 7, 7), DIMS, aligned=True, presence=False)
    assert "presence" not in b
    states = model.encode(b)
    assert all(v.shape[0] == 6 for v in states.values())


def test_ef_lstm_alignment():
    b = make_batch(6, (7, 7, 7), DIMS, aligned=True, presence=False)
    aligned = align_to_text(b)
    assert aligned["audio"] is b["audio"] and aligned["vision"] is b["vision"]
    # 6 frames onto 3 steps: pairs averaged; 2 frames onto 4 steps: each repeated; padding stays 0
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    assert resample_to(x, torch.tensor([6]), torch.tensor([3]), 4).flatten().tolist() == [0.5, 2.5, 4.5, 0.0]
    assert resample_to(x, torch.tensor([2]), torch.tensor([4]), 4).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    u = make_batch(6, (7, 20, 15), DIMS, presence=False)
    states = align_to_text(u)
    assert states["audio"].shape == (6, 7, DIMS["audio"]) and states["vision"].shape == (6, 7, DIMS["vision"])
    assert torch.equal(states["lengths"], u["lengths"][:, 0])
    past = torch.arange(7)[None, :] >= u["lengths"][:, :1]
    assert states["audio"][past].abs().sum() == 0
