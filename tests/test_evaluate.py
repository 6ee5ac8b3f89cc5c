"""The evaluator's many-mask fuse: one pass per presence pattern must equal one pass per mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import SUBSETS, make_synthetic, modality_masks, subset_masks
from modules.registry import create_model
from tests.helpers import CUDA
from training.config import Config
from training.evaluate import PATTERN_PRESENCE, Evaluator, presence_patterns
from training.metrics import sentiment_metrics


def _evaluator(model_name: str) -> tuple[Evaluator, object]:
    data = make_synthetic(seed=3, n_train=16, n_valid=16, n_test=600, seq_len=5, dims=(6, 4, 5))
    cfg = Config(model=model_name, hidden_dim=16, num_heads=2)
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg, data.dims)
    return Evaluator.from_config(model, cfg, torch.device("cpu")), data.splits["test"]


def test_pattern_table_inverts_presence_patterns():
    assert presence_patterns(PATTERN_PRESENCE).tolist() == list(range(7))


@pytest.mark.parametrize("model_name,grouped", [("attention_robust_v4", False), ("attention_robust_v4", True),
                                                ("tfn", False), ("tfn", True)])
def test_fuse_many_by_pattern_equals_one_fuse_per_mask(model_name, grouped):
    # 11 masks over 7 patterns, 600 rows in two evaluation chunks: the by-pattern path runs, one
    # pass per pattern or (grouped, the default) all patterns in one call per 256 rows where the model can
    ev, test = _evaluator(model_name)
    ev.group_patterns = grouped
    presences = [modality_masks(test.n, p) for p in (0.0, 0.3, 0.5, 0.7)] + [subset_masks(test.n, s) for s in SUBSETS]
    states = ev.encode(test)
    for presence, fused in zip(presences, ev.fuse_many(test, presences)):
        one = ev.fuse(states, presence)
        np.testing.assert_allclose(fused.score, one.score, rtol=0, atol=1e-6)
        np.testing.assert_allclose(fused.logits, one.logits, rtol=0, atol=1e-6)
        if one.weights is not None:
            np.testing.assert_allclose(fused.weights, one.weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_name,encoder", [("attention_robust_v4", "mlp"), ("attention_robust_v4", "lstm"),
                                                ("attention_robust_v4", "cfc"), ("tfn", "mlp"), ("lf_dnn", "mlp"),
                                                ("ef_lstm", "mlp")])
def test_fuse_many_in_length_order_with_chunks_cut_to_their_longest_row_equals_one_fuse_per_mask(
        model_name, encoder):
    # unaligned lengths that differ by row: fuse_many takes the rows longest first and cuts each
    # chunk to its longest row; encode + fuse see every row at the full padded length, in order
    from bench.shapes import make_shaped

    data = make_shaped({"text": (7, 6), "audio": (11, 4), "vision": (9, 5)}, (16, 16, 600), seed=1)
    test = data.splits["test"]
    cfg = Config(model=model_name, encoder=encoder, hidden_dim=16, num_heads=2)
    torch.manual_seed(0)
    ev = Evaluator.from_config(create_model(cfg.model, cfg, data.dims), cfg, torch.device("cpu"))
    shortest = np.sort(test.lengths.max(1))[:test.n - 512]  # the rows of the second chunk
    assert shortest.max() < 9  # so every modality of that chunk is cut
    presences = [modality_masks(test.n, p) for p in (0.0, 0.5)] + [subset_masks(test.n, s) for s in ("T", "AV")]
    states = ev.encode(test)
    for presence, fused in zip(presences, ev.fuse_many(test, presences)):
        one = ev.fuse(states, presence)
        np.testing.assert_allclose(fused.score, one.score, rtol=0, atol=1e-5)
        np.testing.assert_allclose(fused.logits, one.logits, rtol=0, atol=1e-5)


def test_fuse_many_still_refuses_a_row_without_modalities():
    ev, test = _evaluator("attention_robust_v4")
    bad = np.ones((test.n, 3), dtype=bool)
    row = int(np.argsort(-test.lengths.max(1), kind="stable")[-1])  # the longest rows go first: the last of them,
    assert test.n > 512  # in a second chunk
    bad[row] = False
    presences = [subset_masks(test.n, s) for s in SUBSETS] + [bad]
    with pytest.raises(ValueError, match=rf"^sample\(s\) {row} have no modality present"):  # the split's row number
        ev.fuse_many(test, presences)
    with pytest.raises(ValueError, match=rf"^sample\(s\) {row} have no modality present"):
        ev.fuse(ev.encode(test), bad)
    from modules.presence import presence_checked

    with presence_checked(), pytest.raises(ValueError, match=rf"^sample\(s\) {row} have"):  # the models check
        ev.fuse_many(test, presences)  # shapes only in there: a pattern -1 would have fused as all present


def test_an_evaluation_pass_reads_nothing_back_per_chunk(monkeypatch):
    # each chunk's fuse checked its presence mask with a read back (a wait on a GPU); the masks are
    # checked once, on the host, before the first chunk
    from torch.profiler import ProfilerActivity, profile

    import training.evaluate as evaluate

    ev, test = _evaluator("attention_robust_v4")
    masks = [modality_masks(test.n, p) for p in (0.0, 0.3, 0.5)]

    def reads(chunk_rows: int) -> int:
        monkeypatch.setattr(evaluate, "EVAL_BATCH", chunk_rows)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ev.fuse_many(test, masks[:1])
            ev.fuse(ev.encode(test), masks[0])
        return sum(e.name in ("aten::_local_scalar_dense", "aten::nonzero") for e in prof.events())

    assert reads(128) == reads(512) == 0  # 5 chunks and 2: the masks are checked with numpy


@CUDA
def test_an_evaluation_pass_on_cuda_waits_on_the_card_only_to_collect(monkeypatch):
    # per chunk, the presence check read the card and the row index and pass table went over in
    # blocking copies (each waits for the work queued before it); more chunks add no wait now
    import warnings

    import training.evaluate as evaluate

    ev, test = _evaluator("attention_robust_v4")
    ev.device = torch.device("cuda")
    ev.model.to(ev.device)
    sweep = [modality_masks(test.n, p) for p in (0.0, 0.3, 0.5)] + [subset_masks(test.n, s) for s in SUBSETS]

    def syncs(chunk_rows: int) -> int:
        monkeypatch.setattr(evaluate, "EVAL_BATCH", chunk_rows)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ev.fuse_many(test, sweep)  # one pass per pattern
                ev.fuse_many(test, sweep[:1])  # one pass per mask
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    ev.fuse_many(test, sweep[:1])  # warm-up: the card's first use
    assert syncs(128) == syncs(512)


def test_frame_erasure_batch_by_batch_equals_the_erased_copy():
    from datasets import SplitTensors, frame_keep, frame_missing

    _, test = _evaluator("attention_robust_v4")
    copy = frame_missing(test, 0.4)
    rows = torch.tensor([0, 7, 599, 3])
    lazy = SplitTensors(test, "cpu", keep=frame_keep(test, 0.4)).gather(rows)
    eager = SplitTensors(copy, "cpu").gather(rows)
    for m in ("text", "audio", "vision"):
        assert torch.equal(lazy[m], eager[m]), m
    assert not torch.equal(lazy["audio"], SplitTensors(test, "cpu").gather(rows)["audio"])  # something was erased


@pytest.mark.parametrize("tta", [None, "norm"])
def test_the_sweep_erases_frames_batch_by_batch_as_the_erased_copy_would(tta):
    # the frame-level rows of the sweep (erased batch by batch) equal a fuse of the erased copy;
    # test-time adaptation that re-encodes reads the erased features too
    from datasets import frame_missing
    from training.tta import Tent

    ev, test = _evaluator("attention_robust_v4")
    if tta:
        ev.tta = Tent(ev.model, tta)
    full = np.ones((test.n, 3), dtype=bool)
    out = ev.sweep(test, [0.0], [0.0, 0.3, 0.6])
    for r in (0.3, 0.6):
        fused = ev.fuse_many(frame_missing(test, r), [full])[0]
        preds, _ = ev.predictions(fused, full)
        assert out["frame_missing_rate"][repr(r)] == sentiment_metrics(
            preds, test.labels, p_pos=ev.positive_scores(fused, full)), r
