"""Smaller feature storage: float16 features and the memory-mapped cache of standardized splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import MODALITIES, SplitTensors, make_synthetic
from datasets.errors import DataError
from datasets.storage import cached, to_dtype
from training.config import Config
from training.run import load_and_standardize


def test_float16_storage_keeps_values_and_gathers_float32():
    data = make_synthetic(n_train=40, n_valid=8, n_test=8)
    before = data.splits["train"].text.copy()
    to_dtype(data, "float16")
    split = data.splits["train"]
    assert all(split.features(m).dtype == np.float16 for m in MODALITIES)
    np.testing.assert_array_equal(split.text, before.astype(np.float16))  # numpy's rounding, bitwise
    batch = SplitTensors(split).gather(torch.tensor([3, 0]))
    assert batch["text"].dtype == torch.float32 and batch["text"].shape == (2, *before.shape[1:])
    assert torch.equal(batch["text"][1], torch.from_numpy(split.text[0].astype(np.float32)))
    with pytest.raises(DataError, match="unknown feature dtype"):
        to_dtype(data, "int8")


def test_feature_cache_is_written_once_then_memory_mapped(tmp_path):
    cfg = Config(feature_cache=str(tmp_path / "cache"), feature_dtype="float16")
    plain, plain_stats = load_and_standardize(Config(feature_dtype="float16"))
    first, stats = load_and_standardize(cfg)
    second, stats2 = load_and_standardize(cfg)
    for data in (first, second):
        for s, split in data.splits.items():
            assert isinstance(split.audio, np.memmap) and not split.audio.flags.writeable
            for m in MODALITIES:
                np.testing.assert_array_equal(split.features(m), plain.splits[s].features(m))
            np.testing.assert_array_equal(split.labels, plain.splits[s].labels)
            np.testing.assert_array_equal(split.ids, plain.splits[s].ids)
    assert set(stats) == set(plain_stats) and all(torch.equal(stats2[k], plain_stats[k]) for k in stats)
    calls = []
    cached(cfg.feature_cache, next(p.name for p in (tmp_path / "cache").iterdir()), lambda: calls.append(1))
    assert not calls  # a complete cache is never rebuilt
    other, _ = load_and_standardize(Config(feature_cache=cfg.feature_cache, synthetic_seed=1))
    assert not np.array_equal(other.splits["train"].text, first.splits["train"].text)  # another key


def test_the_cache_key_follows_the_files_of_a_data_folder_not_what_lies_below_it(tmp_path):
    # a .csd folder whose folds.json is rewritten in place keeps the folder's own time: was a stale cache
    import os

    from datasets.storage import cache_key

    folder = tmp_path / "mosi_csd"
    folder.mkdir()
    (folder / "folds.json").write_text('{"train": ["a"]}')
    (folder / "audio.csd").write_bytes(b"x" * 10)
    key = cache_key({"data_path": str(folder)})
    folder_time = os.stat(folder).st_mtime_ns
    (folder / "folds.json").write_text('{"train": ["b"]}')
    os.utime(folder / "folds.json", ns=(1, 1))  # even with an old time: the content's size or time moved
    assert os.stat(folder).st_mtime_ns == folder_time and cache_key({"data_path": str(folder)}) != key
    key = cache_key({"data_path": str(folder)})
    (folder / "cache" / "0123").mkdir(parents=True)  # a --feature_cache kept inside the data folder
    (folder / "cache" / "0123" / "train.audio.npy").write_bytes(b"z")
    (folder / "notes").symlink_to(tmp_path / "absent")  # a broken link: was a FileNotFoundError traceback
    assert cache_key({"data_path": str(folder)}) == key  # was: a new key, and a new full cache, every run
    file = tmp_path / "data.pkl"
    file.write_bytes(b"y")
    assert cache_key({"data_path": str(file)}) == cache_key({"data_path": str(file)})
