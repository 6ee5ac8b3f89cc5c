"""The CfC encoder (modules/cfc_encoder.py): shapes, padding invariance, gradients, the model with it."""

from __future__ import annotations

import pytest
import torch

from attention_robust_v4 import MODALITIES, AttentionRobustV4
from modules.cfc_encoder import VariationalCfCEncoder
from modules.encoders import build_encoder
from modules.losses import task_loss
from modules.pooling import length_mask, reverse_valid
from tests.helpers import tiny_args, tiny_pickle
from training.cli import main as cli_main
from training.config import Config

H = 16
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("length", [1, 7, 50])
def test_shapes(bidirectional: bool, length: int) -> None:
    torch.manual_seed(0)
    enc = build_encoder("cfc", 5, H, dropout=0.1, bidirectional=bidirectional, variational=True)
    assert isinstance(enc, VariationalCfCEncoder)
    lengths = torch.tensor([length, 1, max(1, length // 2), length])
    out = enc(torch.randn(4, length, 5), lengths)
    assert out["tokens"].shape == (4, length, H)
    assert out["token_mask"].dtype == torch.bool and torch.equal(out["token_mask"].sum(1), lengths)
    assert (out["tokens"][~out["token_mask"]] == 0).all()
    for key in ("pooled", "mu", "logvar", "std", "z"):
        assert out[key].shape == (4, H)
    torch.testing.assert_close(out["std"], torch.exp(0.5 * out["logvar"]))


def test_reverse_valid_reverses_the_valid_steps_only() -> None:
    x = torch.arange(12.0).view(2, 6, 1)
    r = reverse_valid(x, torch.tensor([3, 6]))
    assert r[0, :, 0].tolist() == [2.0, 1.0, 0.0, 3.0, 4.0, 5.0]
    assert r[1, :, 0].tolist() == [11.0, 10.0, 9.0, 8.0, 7.0, 6.0]
    assert torch.equal(reverse_valid(r, torch.tensor([3, 6])), x)


def test_reverse_valid_gradient_is_that_of_the_reordering() -> None:
    # the gradient of a reordering puts each output's gradient back at the step it came from
    lengths = torch.tensor([4, 1, 6])
    x = torch.randn(3, 6, 2, dtype=torch.double, requires_grad=True)
    torch.autograd.gradcheck(lambda t: reverse_valid(t, lengths), (x,))
    w = torch.randn(3, 6, 2, dtype=torch.double)
    (reverse_valid(x, lengths) * w).sum().backward()
    assert torch.equal(x.grad, reverse_valid(w, lengths))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_cannot_change_any_output(bidirectional: bool) -> None:
    torch.manual_seed(0)
    enc = build_encoder("cfc", 5, H, 0.0, bidirectional, True).eval()
    lengths = torch.tensor([3, 1, 9, 5])
    x = torch.randn(4, 9, 5)
    pad = ~length_mask(lengths, 9)
    x[pad] = 0.0
    garbage = x.clone()
    garbage[pad] = 100 * torch.randn(int(pad.sum()), 5)
    a, b = enc(x, lengths), enc(garbage, lengths)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and a row alone, without any padding, gives the same states
    for i, n in enumerate(lengths.tolist()):
        alone = enc(x[i:i + 1, :n], lengths[i:i + 1])
        torch.testing.assert_close(alone["mu"], a["mu"][i:i + 1])
        torch.testing.assert_close(alone["tokens"], a["tokens"][i:i + 1, :n])


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    enc = build_encoder("cfc", 5, H, 0.1, True, True).train()
    out = enc(torch.randn(4, 6, 5), torch.tensor([6, 2, 1, 4]))
    (out["z"].pow(2).sum() + out["tokens"].pow(2).sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_the_model_with_cfc_never_leaks_a_missing_modality() -> None:
    torch.manual_seed(0)
    dims = {"text": 6, "audio": 4, "vision": 5}
    model = AttentionRobustV4(Config(encoder="cfc", hidden_dim=16, num_heads=2), dims).eval()
    lengths = torch.tensor([[7, 3, 5], [2, 7, 1], [5, 5, 5]])
    batch = {m: torch.randn(3, 7, dims[m]) for m in MODALITIES}
    batch["lengths"] = lengths
    for i, m in enumerate(MODALITIES):
        presence = torch.ones(3, 3, dtype=torch.bool)
        presence[:, i] = False
        garbage = dict(batch, **{m: 100 * torch.randn_like(batch[m])})
        assert torch.equal(model(batch, presence)["score"], model(garbage, presence)["score"]), m


@pytest.mark.slow
def test_the_model_learns_with_cfc_encoders() -> None:
    torch.manual_seed(0)
    n, dims = 32, {"text": 6, "audio": 4, "vision": 5}
    g = torch.Generator().manual_seed(3)
    batch = {m: torch.randn(n, 5, dims[m], generator=g) for m in MODALITIES}
    batch["lengths"] = torch.randint(1, 6, (n, 3), generator=g)
    valid = {m: length_mask(batch["lengths"][:, i], 5) for i, m in enumerate(MODALITIES)}
    for m in MODALITIES:
        batch[m][~valid[m]] = 0.0
    signal = batch["text"][:, :, 0].sum(1) - batch["vision"][:, :, 1].sum(1)
    batch["labels"] = 2.5 * torch.tanh(signal / 2)
    batch["presence"] = torch.ones(n, 3, dtype=torch.bool)
    cfg = Config(encoder="cfc", hidden_dim=16, num_heads=2, dropout=0.0, lr=1e-2)
    model = AttentionRobustV4(cfg, dims)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def mae() -> float:
        model.eval()
        with torch.no_grad():
            return (model(batch)["score"] - batch["labels"]).abs().mean().item()

    start = mae()
    for _ in range(40):
        model.train()
        out = model(batch)
        loss = sum(task_loss(cfg, out, batch["labels"]).values()) + sum(out["losses"].values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = mae()
    assert end < 0.5 * start and end < 0.4, (start, end)


@pytest.mark.slow
def test_cli_trains_and_sweeps_with_cfc(tmp_path) -> None:
    data = tiny_pickle(tmp_path / "tiny.pkl")
    assert cli_main(tiny_args(data, tmp_path / "run", "--encoder", "cfc")) == 0
    assert (tmp_path / "run" / "metrics.json").exists()
