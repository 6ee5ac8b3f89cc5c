"""Missing-modality protocols: modality masks, subsets, frame-level erasure, presence application."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import (
    SUBSETS,
    apply_presence,
    frame_missing,
    make_synthetic,
    modality_masks,
    sample_presence,
    subset_masks,
)

# The published test-time masks (the first rows at two rates): pinned so that results stay
# comparable across versions of the code.
PINNED = {
    0.5: [[1, 1, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0]],
    0.3: [[1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 0]],
}


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
def test_modality_masks(p):
    m = modality_masks(10_000, p)
    assert m.shape == (10_000, 3) and m.dtype == bool
    assert m.any(axis=1).all()
    # rows that would lose all three get one back, so the expected missing fraction is p - p**3 / 3,
    # the same for each modality
    for col in (~m).T:
        assert abs(col.mean() - (p - p ** 3 / 3)) < 0.02
    # exactly one modality: two of three drawn missing, or all three missing and one given back
    assert abs((m.sum(axis=1) == 1).mean() - (3 * p ** 2 * (1 - p) + p ** 3)) < 0.02
    # modalities are dropped independently: the joint rate of two missing matches the product
    both = (~m[:, 0] & ~m[:, 1]).mean()
    assert abs(both - (p ** 2 - p ** 3 * 2 / 3)) < 0.02
    np.testing.assert_array_equal(m, modality_masks(10_000, p))  # fixed per rate
    if p in PINNED:
        np.testing.assert_array_equal(modality_masks(8, p), np.array(PINNED[p], dtype=bool))


def test_masks_differ_between_rates_and_train_time_draws_follow_the_generator():
    assert not np.array_equal(modality_masks(1000, 0.3), modality_masks(1000, 0.31))
    rng = np.random.default_rng(5)
    a, b = sample_presence(rng, 10_000, 0.3), sample_presence(rng, 10_000, 0.3)
    assert not np.array_equal(a, b) and a.any(axis=1).all() and b.any(axis=1).all()
    assert abs((~a).mean() - (0.3 - 0.3 ** 3 / 3)) < 0.02
    np.testing.assert_array_equal(sample_presence(np.random.default_rng(5), 10_000, 0.3), a)


def test_missing_fraction_within_two_points():
    for p in (0.1, 0.2, 0.3):  # the all-missing rescue costs p**3 / 3 < 1 point up to p = 0.3
        assert abs((~modality_masks(10_000, p)).mean() - p) < 0.02


def test_subsets():
    assert list(SUBSETS) == ["T", "A", "V", "TA", "TV", "AV", "TAV"]
    assert SUBSETS["TV"] == (True, False, True)
    m = subset_masks(5, "AV")
    assert m.shape == (5, 3) and m.dtype == bool and (m == [False, True, True]).all()
    with pytest.raises(KeyError):
        subset_masks(3, "X")


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(seed=3, n_train=40, n_valid=20, n_test=300, seq_len=20, dims=(8, 3, 4))


def test_frame_missing(tiny):
    split = tiny.splits["test"]
    before = {m: split.features(m).copy() for m in ("text", "audio", "vision")}
    assert frame_missing(split, 0.0) is split
    out = frame_missing(split, 0.4)
    again = frame_missing(split, 0.4)
    steps = np.arange(20)[None, :]
    for j, m in enumerate(("text", "audio", "vision")):
        np.testing.assert_array_equal(split.features(m), before[m])  # input untouched
        np.testing.assert_array_equal(out.features(m), again.features(m))  # deterministic
        valid = steps < split.lengths[:, j:j + 1]
        kept = np.any(out.features(m) != 0, axis=2)
        assert (kept & valid).sum(1).min() >= 1  # every sequence keeps a step
        assert not (kept & ~valid).any()  # padding stays zero
        erased = (~kept & valid).sum() / valid.sum()
        assert abs(erased - 0.4) < 0.03
        assert out.features(m).dtype == np.float32
    np.testing.assert_array_equal(out.lengths, split.lengths)
    # an extreme rate still keeps one step per sequence
    heavy = frame_missing(split, 0.99)
    assert np.any(heavy.text != 0, axis=2).sum(1).min() >= 1


def test_apply_presence():
    batch = {m: torch.ones(4, 2, 3) for m in ("text", "audio", "vision")}
    batch["labels"] = torch.zeros(4)
    presence = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out = apply_presence(batch, presence)
    assert out is not batch and out["presence"].dtype == torch.bool
    for j, m in enumerate(("text", "audio", "vision")):
        assert torch.equal(out[m].sum(dim=(1, 2)) > 0, presence[:, j])
        assert batch[m].min() == 1  # inputs untouched
    assert out["labels"] is batch["labels"]
