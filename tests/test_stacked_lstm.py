"""Several one-directional LSTMs run as one block-diagonal LSTM (``modules.stacked_lstm``), and the
model's LSTM encoders run that way (``stack_recurrences``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attention_robust_v4 import MODALITIES, AttentionRobustV4
from modules.stacked_lstm import PERSISTENT_UNITS, block_diagonal_weights, lstm, run_lstms, stack_groups
from tests.helpers import DIMS, make_batch
from training.config import Config, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def streams() -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Four streams: two of length 7 (different input and unit sizes), one of 3, one more of 7."""
    torch.manual_seed(0)
    shapes = [(7, 5, 4), (7, 3, 6), (3, 5, 4), (7, 2, 3)]  # (L, D, units)
    inputs = [torch.randn(4, L, D, requires_grad=True) for L, D, _ in shapes]
    weights = [[p.detach().clone().requires_grad_() for p in nn.LSTM(D, u, batch_first=True)._flat_weights]
               for _, D, u in shapes]
    return inputs, weights


def test_stacked_lstm_equals_separate_runs_with_their_gradients() -> None:
    inputs, weights = streams()
    alone = [lstm(x, w, True) for x, w in zip(inputs, weights)]
    together = run_lstms(inputs, weights, True, stack=True)
    assert [t.shape for t in together] == [(4, 7, 4), (4, 7, 6), (4, 3, 4), (4, 7, 3)]
    for a, t in zip(alone, together):
        torch.testing.assert_close(t, a)
    leaves = [*inputs, *(p for w in weights for p in w)]
    probe = [torch.randn_like(a) for a in alone]  # the same upstream gradient for both
    g_alone = torch.autograd.grad(sum((a * p).sum() for a, p in zip(alone, probe)), leaves)
    g_together = torch.autograd.grad(sum((t * p).sum() for t, p in zip(together, probe)), leaves)
    for a, t in zip(g_alone, g_together):
        torch.testing.assert_close(t, a)


@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_under_autocast_the_runs_are_float32_and_return_their_input_dtype(dtype: torch.dtype, stack: bool) -> None:
    # --amp: autocast would run them in bfloat16 here (float16 on CUDA); they stay the float32 runs,
    # rounded once to the input's dtype, and their gradients reach the float32 weights
    inputs, weights = streams()
    x = inputs[0].detach().to(dtype)
    reference = lstm(x.float(), weights[0], True).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runs = run_lstms([x, x], [weights[0], weights[0]], True, stack=stack)
    for out in runs:
        assert out.dtype == dtype
        torch.testing.assert_close(out, reference, **({} if stack else {"rtol": 0, "atol": 0}))
    (grad,) = torch.autograd.grad(runs[0].float().sum(), weights[0][1])
    assert grad.dtype == torch.float32 and bool(grad.isfinite().all()) and bool(grad.abs().sum() > 0)


def test_a_stacked_stream_never_reads_another_streams_input() -> None:
    inputs, weights = streams()
    before = run_lstms(inputs, weights, False, stack=True)
    inputs[1] = inputs[1] * 100 + 5  # a stream of the same length as streams 0 and 3
    after = run_lstms(inputs, weights, False, stack=True)
    for k in (0, 2, 3):
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6)
    assert not torch.allclose(after[1], before[1])


def test_stacks_hold_at_most_max_units_and_still_equal_separate_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, weights = streams()  # units 4, 6, 4, 3 at lengths 7, 7, 3, 7
    calls = []

    def counted(x, w, train):
        calls.append((x.shape[1], w[1].shape[1]))
        return lstm(x, w, train)

    monkeypatch.setattr("modules.stacked_lstm.lstm", counted)
    alone = [lstm(x, w, True) for x, w in zip(inputs, weights)]
    calls.clear()
    capped = run_lstms(inputs, weights, True, stack=True, max_units=10)
    assert calls == [(7, 10), (7, 3), (3, 4)]  # streams 0 + 1 fill 10 units; 3 would overflow them
    for a, t in zip(alone, capped):
        torch.testing.assert_close(t, a)
    calls.clear()
    run_lstms(inputs, weights, True, stack=True, max_units=5)  # no pair fits: every stream alone
    assert sorted(calls) == sorted((x.shape[1], w[1].shape[1]) for x, w in zip(inputs, weights))


def test_stack_groups_pair_the_default_model_s_directions_at_the_mosei_shape() -> None:
    # --hidden_dim 128: 64 units per direction; text 50 steps, audio and vision 500, two directions each
    units = [Config().hidden_dim // 2] * 6
    assert stack_groups([50, 50, 500, 500, 500, 500], units) == [[0, 1], [2, 3], [4, 5]]
    assert stack_groups([50, 50, 375, 375, 500, 500], units) == [[0, 1], [2, 3], [4, 5]]  # MOSI
    assert stack_groups([9, 9, 9], [PERSISTENT_UNITS, 1, 1]) == [[0], [1, 2]]  # a full run stays alone
    assert stack_groups([4, 9, 4], [1, 1, 1]) == [[0, 2], [1]]  # by length, in order of first appearance


def test_block_diagonal_weights_keep_each_gate_block_of_each_stream() -> None:
    _, weights = streams()
    joint = block_diagonal_weights(weights[:2])  # units 4 + 6, inputs 5 + 3
    assert [w.shape for w in joint] == [(40, 8), (40, 10), (40,), (40,)]
    units, cols = (4, 6), ((0, 5, 8), (0, 4, 10))  # each stream's units; its columns in w_ih, w_hh
    for g in range(4):  # gate g of every stream, then gate g + 1
        for k, u in enumerate(units):
            first = 10 * g + sum(units[:k])
            rows, own = slice(first, first + u), slice(u * g, u * (g + 1))
            for i in (0, 1):  # w_ih, w_hh: the stream's block, zeros beside it
                c = cols[i]
                torch.testing.assert_close(joint[i][rows, c[k]:c[k + 1]], weights[k][i][own])
                assert not joint[i][rows, c[1 - k]:c[2 - k]].any()
            for i in (2, 3):  # the biases
                torch.testing.assert_close(joint[i][rows], weights[k][i][own])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_stacked_recurrences_give_the_model_the_same_states_and_gradients(bidirectional: bool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(x, weights, train):
        calls.append(x.shape[1])
        return lstm(x, weights, train)

    monkeypatch.setattr("modules.stacked_lstm.lstm", counted)
    cfg = Config(encoder="lstm", hidden_dim=16, num_heads=4, dropout=0.0, bidirectional=bidirectional)
    torch.manual_seed(0)
    model = AttentionRobustV4(cfg, DIMS)
    batch = make_batch(5, lengths=(6, 9, 9))  # audio and vision share a length: stacked together
    batch["lengths"][:, 1] = torch.tensor([9, 1, 4, 7, 2])
    presence = torch.ones(5, 3, dtype=bool)
    runs = {}
    for stack in (False, True):
        model.stack_recurrences = stack
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # the same variational samples
        out = model.fuse(model.encode(batch), presence)
        (out["score"].sum() + sum(out["losses"].values())).backward()
        d = 2 if bidirectional else 1  # runs per encoder; stacked: one per distinct length (text 6; audio, vision 9)
        assert calls == ([6, 9] if stack else [6] * d + [9] * 2 * d)
        model.eval()
        states = model.encode(batch)
        model.train()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs[stack] = states, out["score"], grads
    (s0, y0, g0), (s1, y1, g1) = runs[False], runs[True]
    for m in MODALITIES:
        for key in ("mu", "std", "keys", "values"):
            torch.testing.assert_close(s1[f"{m}_{key}"], s0[f"{m}_{key}"])
    torch.testing.assert_close(y1, y0)
    assert g1.keys() == g0.keys() and any("lstm" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)


def test_stack_lstm_is_refused_without_an_lstm_encoder() -> None:
    Config(stack_lstm=True, encoder="lstm").validate()
    for over in ({}, {"encoder": "cfc"}, {"encoder": "lstm", "model": "ef_lstm"}):
        with pytest.raises(ConfigError, match="--stack_lstm applies to --encoder lstm"):
            Config(stack_lstm=True, **over).validate()
