"""Readers, cleaning, validation, standardization, loaders and the summary CLI of the data layer."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import (
    MODALITIES,
    DataError,
    MultimodalTensorDataset,
    Standardizer,
    length_bucketed,
    load_data,
    make_loader,
    make_synthetic,
    trim_to_longest,
)
from datasets.batching import epoch_order
from datasets.csd import deploy_sequence, read_sequence
from tests.helpers import CUDA

ROOT = Path(__file__).resolve().parents[1]
SPLIT_N = {"train": 6, "valid": 3, "test": 4}


def padded(rng, n, seq_len, dim, lengths):
    x = rng.standard_normal((n, seq_len, dim)).astype(np.float32)
    for i, ln in enumerate(lengths):
        x[i, ln:] = 0
    return x


def mmsa_obj(seq=(50, 50, 50), dims=(768, 5, 20), seed=0, label_shape="flat", with_lengths=True):
    rng = np.random.default_rng(seed)
    obj = {}
    for s, n in SPLIT_N.items():
        lens = [rng.integers(1, L + 1, n) for L in seq]
        d = {m: padded(rng, n, L, D, ln) for m, L, D, ln in zip(MODALITIES, seq, dims, lens)}
        y = rng.uniform(-3, 3, n).astype(np.float32)
        d["regression_labels"] = y if label_shape == "flat" else y[:, None]
        d["classification_labels"] = np.sign(y) + 1
        d["text_bert"] = np.zeros((n, 3, seq[0]), dtype=np.float32)
        d["id"] = np.array([f"{s}vid$_${i + 1}" for i in range(n)])
        d["raw_text"] = np.array([f"utterance {i}" for i in range(n)], dtype=object)
        if with_lengths:
            d["audio_lengths"] = [int(v) for v in lens[1]]
            d["vision_lengths"] = np.asarray(lens[2])
        d["_true_lengths"] = np.stack(lens, 1)
        obj[s] = d
    return obj


def write(tmp_path, obj, name="data.pkl"):
    path = tmp_path / name
    clean = {s: {k: v for k, v in d.items() if not k.startswith("_")} if isinstance(d, dict) else d
             for s, d in obj.items()}
    path.write_bytes(pickle.dumps(clean, protocol=4))
    return path


# ---- readers on generated files in the real layouts ---------------------------------------------


def test_mmsa_aligned(tmp_path):
    obj = mmsa_obj(label_shape="column")
    data = load_data("mosi", str(write(tmp_path, obj, "aligned_50.pkl")))
    assert data.format == "mmsa" and data.name == "mosi"
    assert data.dims == {"text": 768, "audio": 5, "vision": 20}
    for s, split in data.splits.items():
        assert split.n == SPLIT_N[s] and split.text.shape == (SPLIT_N[s], 50, 768)
        assert split.labels.shape == (SPLIT_N[s],) and split.labels.dtype == np.float32
        assert split.lengths.dtype == np.int64 and split.lengths.shape == (SPLIT_N[s], 3)
        np.testing.assert_array_equal(split.lengths, obj[s]["_true_lengths"])
        assert split.ids[0] == f"{s}vid$_$1" and split.raw_text[1] == "utterance 1"
        assert split.features("audio") is split.audio and split.features(2) is split.vision


def test_mmsa_unaligned_mosei_dims(tmp_path):
    obj = mmsa_obj(seq=(50, 500, 375), dims=(768, 74, 35), with_lengths=False)
    data = load_data(data_path=str(write(tmp_path, obj)), data_format="mmsa")
    assert data.dims == {"text": 768, "audio": 74, "vision": 35}
    assert data.splits["train"].audio.shape[1] == 500 and data.splits["train"].vision.shape[1] == 375
    for s in SPLIT_N:
        np.testing.assert_array_equal(data.splits[s].lengths, obj[s]["_true_lengths"])


def test_mult(tmp_path):
    rng = np.random.default_rng(1)
    obj = {}
    for s, n in SPLIT_N.items():
        lens = rng.integers(1, 21, n)
        obj[s] = {"text": padded(rng, n, 20, 300, lens), "audio": padded(rng, n, 20, 74, lens),
                  "vision": padded(rng, n, 20, 35, lens),
                  "labels": rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32),
                  "id": np.array([[f"v{s}{i}".encode(), b"1.5", b"3.0"] for i in range(n)])}
        obj[s]["audio"][0, 0, 0] = -np.inf  # the MOSEI audio artefact
    data = load_data(data_path=str(write(tmp_path, obj, "mosei_senti_data.pkl")))
    assert data.format == "mult" and data.dims == {"text": 300, "audio": 74, "vision": 35}
    tr = data.splits["train"]
    assert tr.ids[0] == "vtrain0[1.5:3.0]" and tr.labels.shape == (6,)
    np.testing.assert_allclose(tr.labels, obj["train"]["labels"].reshape(-1))
    assert tr.audio[0, 0, 0] == 0 and np.isfinite(tr.audio).all()
    assert (tr.raw_text == "").all()


def test_csd_folder(tmp_path):
    folder = tmp_path / "csd"
    folder.mkdir()
    rng = np.random.default_rng(2)
    videos = {"vidA": 3, "vidB": 2, "vidC": 2, "vidD": 3}
    labels, text, audio, vision = {}, {}, {}, {}
    for v, k in videos.items():
        bounds = np.cumsum(np.r_[0.0, rng.uniform(2, 4, k)])
        iv = np.stack([bounds[:-1], bounds[1:]], 1)
        labels[v] = (iv, rng.uniform(-3, 3, (k, 1)).astype(np.float32))
        audio[v] = (iv, rng.standard_normal((k, 74)).astype(np.float32))  # one row per segment
        vision[v] = (iv, rng.standard_normal((k, 35)).astype(np.float32))
        frames = np.arange(bounds[0], bounds[-1], 0.25)  # frame-level words: several rows per segment
        text[v] = (np.stack([frames, frames + 0.25], 1), rng.standard_normal((len(frames), 300)).astype(np.float32))
    deploy_sequence(folder / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", labels)
    deploy_sequence(folder / "CMU_MOSI_COVAREP.csd", "COVAREP", audio)
    deploy_sequence(folder / "CMU_MOSI_Visual_Facet_41.csd", "FACET", vision)
    deploy_sequence(folder / "CMU_MOSI_TimestampedWordVectors.csd", "glove_vectors", text)
    (folder / "folds.json").write_text(json.dumps({"train": ["vidA", "vidB"], "valid": ["vidC"],
                                                   "test": ["vidD"]}))
    data = load_data(data_path=str(folder))
    assert data.format == "csd" and data.dims == {"text": 300, "audio": 74, "vision": 35}
    tr = data.splits["train"]
    assert tr.ids.tolist() == ["vidA$_$1", "vidA$_$2", "vidA$_$3", "vidB$_$1", "vidB$_$2"]
    np.testing.assert_allclose(tr.labels, np.r_[labels["vidA"][1][:, 0], labels["vidB"][1][:, 0]], atol=1e-6)
    np.testing.assert_allclose(tr.audio[:3, 0], audio["vidA"][1], atol=1e-5)  # segment-level rows kept
    assert (tr.lengths[:, 1:] == 1).all() and tr.lengths[:, 0].min() >= 8  # text kept as a sequence
    assert tr.text.shape[1] <= 50
    assert data.splits["test"].ids.tolist() == ["vidD$_$1", "vidD$_$2", "vidD$_$3"]



def left_padded(rng, n, seq_len, dim, lengths):
    """The MulT authors' layout: zeros first, the sequence in the last ``lengths[i]`` steps."""
    x = rng.standard_normal((n, seq_len, dim)).astype(np.float32)
    for i, ln in enumerate(lengths):
        x[i, :seq_len - ln] = 0
    return x


def mult_left_obj(seed=3, seq_len=50):
    rng = np.random.default_rng(seed)
    obj = {}
    for s, n in SPLIT_N.items():
        lens = rng.integers(1, seq_len, n)
        lens[0] = 15
        obj[s] = {m: left_padded(rng, n, seq_len, d, lens) for m, d in zip(MODALITIES, (300, 5, 20))}
        obj[s]["labels"] = rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32)
        obj[s]["id"] = np.array([[f"v{s}{i}".encode(), b"1.5", b"3.0"] for i in range(n)])
        obj[s]["_lens"] = lens
    return obj


def test_mult_left_padded(tmp_path, caplog):
    obj = mult_left_obj()
    with caplog.at_level(logging.INFO):
        data = load_data(data_path=str(write(tmp_path, obj, "mosi_data.pkl")))
    assert "left-padded" in caplog.text and any("left-padded" in n for n in data.notes)
    for s, split in data.splits.items():
        lens = obj[s]["_lens"]
        assert split.lengths[0, 0] == 15  # read as 50 when the length was the last non-zero step
        np.testing.assert_array_equal(split.lengths, np.repeat(lens[:, None], 3, axis=1))
        for m in MODALITIES:
            x, raw = split.features(m), obj[s][m]
            for i, ln in enumerate(lens):  # data moved to the start, zeros after: the project's layout
                np.testing.assert_array_equal(x[i, :ln], raw[i, 50 - ln:])
                assert not x[i, ln:].any()
    std = Standardizer.fit(data.splits["train"])  # statistics of real frames only, no padding frames
    tr = obj["train"]
    frames = np.concatenate([tr["audio"][i, 50 - ln:] for i, ln in enumerate(tr["_lens"])])
    np.testing.assert_allclose(std.mean["audio"], frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.std["audio"], frames.std(0), rtol=1e-4)


def test_mmsa_text_bert_mask(tmp_path):
    """MMSA aligned layout: BERT features are non-zero on padded tokens; text_bert row 1 is the mask."""
    obj = mmsa_obj(seq=(50, 50, 50), dims=(768, 5, 20), seed=4)
    rng = np.random.default_rng(4)
    for s, d in obj.items():
        n = SPLIT_N[s]
        d["text"] = rng.standard_normal((n, 50, 768)).astype(np.float32)  # no zero steps at all
        tlen = d["_true_lengths"][:, 0]
        mask = (np.arange(50)[None, :] < tlen[:, None]).astype(np.float32)
        ids = np.where(mask > 0, rng.integers(1000, 30000, (n, 50)), 0).astype(np.float32)
        d["text_bert"] = np.stack([ids, mask, np.zeros_like(mask)], axis=1)  # (N, 3, L)
    data = load_data(data_path=str(write(tmp_path, obj)))
    assert any("text_bert" in n for n in data.notes)
    for s, split in data.splits.items():
        np.testing.assert_array_equal(split.lengths, obj[s]["_true_lengths"])
        for i, ln in enumerate(obj[s]["_true_lengths"][:, 0]):
            np.testing.assert_array_equal(split.text[i, :ln], obj[s]["text"][i, :ln])
            assert not split.text[i, ln:].any()
    for d in obj.values():  # a left-aligned mask (ones at the end) moves the text to the start
        d["text_bert"] = d["text_bert"][:, :, ::-1].copy()
        d["text"] = d["text"][:, ::-1].copy()
    data = load_data(data_path=str(write(tmp_path, obj)))
    for s, split in data.splits.items():
        np.testing.assert_array_equal(split.lengths[:, 0], obj[s]["_true_lengths"][:, 0])
        ln = obj[s]["_true_lengths"][0, 0]
        np.testing.assert_array_equal(split.text[0, :ln], obj[s]["text"][0, 50 - ln:])


def test_mmsa_left_padded_with_lengths(tmp_path):
    """Given audio/vision lengths and zeros in front: the data is moved, the lengths kept."""
    obj = mmsa_obj(seq=(50, 375, 500), dims=(768, 5, 20), seed=5)
    for d in obj.values():
        for j, m in ((1, "audio"), (2, "vision")):
            for i, ln in enumerate(d["_true_lengths"][:, j]):
                d[m][i] = np.roll(d[m][i], d[m].shape[1] - ln, axis=0)
    data = load_data(data_path=str(write(tmp_path, obj)))
    for s, split in data.splits.items():
        np.testing.assert_array_equal(split.lengths, obj[s]["_true_lengths"])
        ln = obj[s]["_true_lengths"][0, 1]
        np.testing.assert_array_equal(split.audio[0, :ln], obj[s]["audio"][0, 375 - ln:])
        assert not split.audio[0, ln:].any()



def write_csd_folder(folder, labels, per_segment=("audio", "vision"), folds=None, skip=()):
    """A .csd folder over ``labels`` {video: (intervals, values)}: audio/vision one row per segment at its
    interval (value = video index * 100 + segment), text as 0.25 s frames; ``skip``: (modality, video, i)."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    feats = {m: {} for m in MODALITIES}
    for j, (v, (iv, _)) in enumerate(labels.items()):
        for m, dim in zip(per_segment, (3, 2)):
            keep = [i for i in range(len(iv)) if (m, v, i) not in skip]
            feats[m][v] = (iv[keep], (j * 100 + np.array(keep, dtype=np.float32))[:, None].repeat(dim, 1))
        frames = np.arange(iv[:, 0].min(), iv[:, 1].max() + 0.25, 0.25)
        words = rng.standard_normal((len(frames), 4)).astype(np.float32)
        feats["text"][v] = (np.stack([frames, frames + 0.25], 1), words)
    deploy_sequence(folder / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels",
                    {v: (iv, np.asarray(y, dtype=np.float32).reshape(-1, 1)) for v, (iv, y) in labels.items()})
    for m in MODALITIES:
        deploy_sequence(folder / f"{m}.csd", m, feats[m])
    if folds is not None:
        (folder / "folds.json").write_text(json.dumps(folds))
    return folder


@pytest.mark.slow
def test_csd_zero_length_segment_kept(tmp_path, caplog):
    """A zero-length label segment keeps the rows at its instant; one that has none is named when dropped."""
    iv = np.array([[0.0, 2.0], [2.0, 4.5], [4.5, 4.5], [4.5, 6.0], [7.0, 7.0]])
    labels = {"vidA": (iv, np.array([1.0, -1.0, 0.2, 2.0, -2.5])),
              "vidB": (iv[:2], np.array([0.5, 1.5])), "vidC": (iv[:2], np.array([-0.5, 2.5]))}
    folder = write_csd_folder(tmp_path / "csd", labels, folds={"train": ["vidA"], "valid": ["vidB"], "test": ["vidC"]},
                              skip={("vision", "vidA", 4)})  # vidA[4] at 7.0 s: no vision row there
    with caplog.at_level(logging.INFO):
        data = load_data(data_path=str(folder))
    tr = data.splits["train"]
    assert tr.ids.tolist() == ["vidA$_$1", "vidA$_$2", "vidA$_$3", "vidA$_$4"]  # the SDK's align kept 3
    np.testing.assert_allclose(tr.labels, [1.0, -1.0, 0.2, 2.0])
    np.testing.assert_allclose(tr.audio[2, 0], [2.0, 2.0, 2.0])  # its own row at [4.5, 4.5]
    assert tr.lengths[2, 0] >= 1 and np.isfinite(tr.text).all()
    assert "dropped 1 of 9 label segments: vidA[4] (zero-length interval [7.000, 7.000] and no vision row" \
        in caplog.text
    assert any("vidA[4]" in n for n in data.notes) and any("kept 1 zero-length" in n for n in data.notes)
    out = subprocess.run([sys.executable, "-m", "datasets", str(folder)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "note:" in out.stdout and "vidA[4] (zero-length" in out.stdout


@pytest.mark.slow
def test_csd_official_labels_zero_length_and_standard_folds(tmp_path, shared_sdk_labels, caplog):
    """The official CMU-MOSI label file: 2WGyTLYerpo[43] ([127.213, 127.213]) is kept (all 2199
    segments); without folds.json the SDK's standard folds are used and a warning says so."""
    labels = {v: (iv, y.reshape(-1)) for v, (iv, y) in read_sequence(shared_sdk_labels).items()}
    folder = write_csd_folder(tmp_path / "csd", labels)
    with caplog.at_level(logging.WARNING):
        data = load_data("mosi", str(folder))
    assert sum(sp.n for sp in data.splits.values()) == 2199
    assert {s: sp.n for s, sp in data.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
    tr = data.splits["train"]
    i = tr.ids.tolist().index("2WGyTLYerpo$_$44")
    j = list(labels).index("2WGyTLYerpo")
    np.testing.assert_allclose(tr.labels[i], labels["2WGyTLYerpo"][1][43], atol=1e-6)
    np.testing.assert_allclose(tr.audio[i, 0], j * 100 + 43)  # the row at that instant, not its neighbour's
    assert "no folds.json; splitting by the CMU-MultimodalSDK's standard CMU-MOSI folds" in caplog.text
    assert "dropped" not in caplog.text


# ---- the real shared files ------------------------------------------------------------------------


def test_shared_pickle(shared_pkl):
    data = load_data("mosi", str(shared_pkl))
    assert data.format == "mmsa"
    assert {s: sp.n for s, sp in data.splits.items()} == {"train": 1447, "valid": 160, "test": 166}
    assert data.dims == {"text": 100, "audio": 73, "vision": 100}
    all_ids = []
    for sp in data.splits.values():
        assert np.abs(sp.labels).max() <= 3
        assert len(set(sp.ids.tolist())) == sp.n
        all_ids += sp.ids.tolist()
        for m in MODALITIES:
            assert np.isfinite(sp.features(m)).all()
        assert (sp.lengths == 1).all()
    assert len(set(all_ids)) == len(all_ids)


@pytest.mark.slow
def test_shared_csd_matches_pickle(shared_pkl, shared_csd):
    pkl = load_data("mosi", str(shared_pkl))
    csd = load_data("mosi", str(shared_csd))
    for s in ("train", "valid", "test"):
        a, b = pkl.splits[s], csd.splits[s]
        order = {i: k for k, i in enumerate(a.ids.tolist())}
        assert set(b.ids.tolist()) == set(order)
        idx = np.array([order[i] for i in b.ids.tolist()])
        np.testing.assert_allclose(b.labels, a.labels[idx], atol=1e-5)
        for m in MODALITIES:
            x, y = a.features(m)[idx, 0], b.features(m)[:, 0]
            same = np.all(np.isclose(x, y, rtol=1e-4, atol=1e-4), axis=1)
            assert same.mean() > 0.85  # ~8% of segments overlap a neighbour and get a sliver of it
            corr = np.corrcoef(x.ravel(), y.ravel())[0, 1]
            assert corr > 0.95


def test_official_label_file(shared_sdk_labels):
    seq = read_sequence(shared_sdk_labels)
    assert len(seq) == 93
    assert sum(iv.shape[0] for iv, _ in seq.values()) == 2199
    assert all(f.shape[1] == 1 and np.abs(f).max() <= 3 for _, f in seq.values())


# ---- bad inputs ----------------------------------------------------------------------------------


def small_obj():
    return mmsa_obj(seq=(5, 5, 5), dims=(4, 3, 2))


def expect_error(tmp_path, obj, *fragments, nan_policy="error"):
    path = write(tmp_path, obj)
    with pytest.raises(DataError) as err:
        load_data(data_path=str(path), nan_policy=nan_policy)
    for f in fragments:
        assert f in str(err.value), str(err.value)
    return str(err.value)


def test_missing_and_truncated_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(data_path=str(tmp_path / "absent.pkl"))
    good = pickle.dumps(small_obj())
    (tmp_path / "t.pkl").write_bytes(good[:200])
    with pytest.raises(DataError, match="truncated"):
        load_data(data_path=str(tmp_path / "t.pkl"))
    with pytest.raises(DataError, match="--data_path"):
        load_data("mosei")


def test_missing_split(tmp_path):
    obj = small_obj()
    del obj["valid"]
    expect_error(tmp_path, obj, "data.pkl", "missing split 'valid'")


def test_missing_key(tmp_path):
    obj = small_obj()
    del obj["test"]["vision"]
    expect_error(tmp_path, obj, "data.pkl", "'test'", "missing key 'vision'")


def test_wrong_rank(tmp_path):
    obj = small_obj()
    obj["train"]["audio"] = obj["train"]["audio"][:, 0]
    expect_error(tmp_path, obj, "'train'", "'audio'", "rank 3")


def test_mismatched_n(tmp_path):
    obj = small_obj()
    obj["valid"]["text"] = obj["valid"]["text"][:2]
    expect_error(tmp_path, obj, "'valid'", "'text'", "2 samples")


def test_dims_differ_between_splits(tmp_path):
    obj = small_obj()
    obj["test"]["vision"] = np.zeros((4, 5, 7), dtype=np.float32)
    expect_error(tmp_path, obj, "'vision'", "dims differ")


def test_empty_split(tmp_path):
    obj = small_obj()
    for k in ("text", "audio", "vision"):
        obj["valid"][k] = obj["valid"][k][:0]
    obj["valid"]["regression_labels"] = obj["valid"]["regression_labels"][:0]
    obj["valid"]["id"] = obj["valid"]["id"][:0]
    obj["valid"]["raw_text"] = obj["valid"]["raw_text"][:0]
    obj["valid"]["audio_lengths"], obj["valid"]["vision_lengths"] = [], []
    expect_error(tmp_path, obj, "'valid'", "empty split")


def test_a_scored_split_with_only_0_labels_is_refused(tmp_path):
    obj = small_obj()
    obj["test"]["regression_labels"][:] = 0.0
    expect_error(tmp_path, obj, "'test'", "'regression_labels'", "every label is 0")
    obj = small_obj()
    obj["train"]["regression_labels"][:] = 0.0  # training on it is pointless but defined
    load_data(data_path=str(write(tmp_path, obj)))


@pytest.mark.parametrize("bad, shown", [(-5, "row 0: -5"), (2.5, "row 0: 2.5"), (float("nan"), "row 0: nan")])
def test_lengths_that_are_not_whole_numbers_are_refused(tmp_path, bad, shown):
    # was: clipped to 1 (or truncated) without a word, cutting the audio to one step
    obj = small_obj()
    obj["train"]["audio_lengths"] = [bad] + [float(v) for v in obj["train"]["audio_lengths"][1:]]
    expect_error(tmp_path, obj, "'train'", "'audio_lengths'", "not whole numbers >= 0", shown)
    obj["train"]["audio_lengths"] = [float(v) for v in obj["train"]["audio_lengths"][1:2]] * len(obj["train"]["id"])
    load_data(data_path=str(write(tmp_path, obj)))  # whole numbers stored as floats are fine


def test_ragged_labels_are_one_line(tmp_path):
    obj = small_obj()
    n = len(obj["train"]["id"])
    obj["train"]["regression_labels"] = [[1.0], [1.0, 2.0]] + [[0.5]] * (n - 2)  # was: numpy's ValueError
    expect_error(tmp_path, obj, "'train'", "'regression_labels'", "labels are ragged")


def test_a_sample_in_two_splits_is_warned_about(tmp_path, caplog):
    obj = small_obj()
    obj["test"]["id"] = np.concatenate([obj["train"]["id"][:3], obj["test"]["id"][3:]])  # was: not a word
    with caplog.at_level("WARNING"):
        load_data(data_path=str(write(tmp_path, obj)))
    assert "3 sample ids of split 'test' are also in split 'train'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_data(data_path=str(write(tmp_path, small_obj())))
    assert "also in split" not in caplog.text


def test_labels_out_of_range(tmp_path):
    obj = small_obj()
    obj["train"]["regression_labels"][2] = 4.5
    expect_error(tmp_path, obj, "'train'", "'regression_labels'", "outside [-3, 3]")


def test_nan_policy_and_neginf(tmp_path, caplog):
    obj = small_obj()
    obj["test"]["text"][0, 0, :2] = np.nan
    obj["test"]["text"][1, 0, 0] = np.inf
    obj["train"]["audio"][0, 0, 0] = -np.inf
    msg = expect_error(tmp_path, obj, "'test'", "'text'", "3 NaN/+inf")
    assert "data.pkl" in msg
    with caplog.at_level(logging.WARNING):
        data = load_data(data_path=str(write(tmp_path, obj)), nan_policy="zero")
    assert np.isfinite(data.splits["test"].text).all() and data.splits["test"].text[0, 0, 0] == 0
    assert data.splits["train"].audio[0, 0, 0] == 0
    assert "1 -inf" in caplog.text
    obj["test"]["text"] = np.nan_to_num(obj["test"]["text"], nan=1.0, posinf=1.0)
    data = load_data(data_path=str(write(tmp_path, obj)))  # only -inf: always replaced
    assert data.splits["train"].audio[0, 0, 0] == 0


# ---- standardization -------------------------------------------------------------------------------


def test_standardizer_train_only(tmp_path):
    data = make_synthetic(seed=1, n_train=60, n_valid=20, n_test=20, seq_len=12, dims=(6, 3, 4))
    data.splits["valid"].audio[:] *= 1000.0  # valid statistics must not matter
    data.splits["train"].audio[:, :, 2] = 0.0  # a constant feature: std floored to 1
    raw_train = {m: data.splits["train"].features(m).copy() for m in MODALITIES}
    std = Standardizer.fit(data.splits["train"])
    ref = Standardizer.fit(make_synthetic(seed=1, n_train=60, n_valid=20, n_test=20, seq_len=12,
                                          dims=(6, 3, 4)).splits["train"])
    np.testing.assert_allclose(std.mean["text"], ref.mean["text"], rtol=1e-6)
    assert std.std["audio"][2] == 1.0
    std.apply(data)
    tr = data.splits["train"]
    for j, m in enumerate(MODALITIES):
        valid = np.arange(12)[None, :] < tr.lengths[:, j:j + 1]
        x = tr.features(m)[valid]
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        if m != "audio":
            np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
        assert (tr.features(m)[~valid] == 0).all()
        assert tr.features(m).dtype == np.float32
        assert not np.array_equal(tr.features(m), raw_train[m])
    sd = std.state_dict()
    assert sd["text.mean"].dtype == torch.float32 and sd["vision.std"].shape == (4,)
    back = Standardizer.from_state_dict(sd)
    for m in MODALITIES:
        np.testing.assert_array_equal(back.mean[m], std.mean[m])
        np.testing.assert_array_equal(back.std[m], std.std[m])


# ---- synthetic, loaders, CLI -----------------------------------------------------------------------


def test_synthetic_default_shape_and_determinism():
    data = load_data()
    assert data.format == "synthetic"
    assert {s: sp.n for s, sp in data.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
    assert data.dims == {"text": 300, "audio": 5, "vision": 20}
    tr = data.splits["train"]
    assert tr.text.dtype == np.float32 and tr.text.shape == (1284, 50, 300)
    assert tr.lengths.min() >= 10 and np.abs(tr.labels).max() <= 3
    assert 0.005 < (tr.labels == 0).mean() < 0.1
    valid = np.arange(50)[None, :] < tr.lengths[:, :1]
    assert (tr.text[~valid] == 0).all()
    again = make_synthetic(seed=0, n_train=50, n_valid=5, n_test=5)
    np.testing.assert_array_equal(again.splits["train"].text, make_synthetic(seed=0, n_train=50, n_valid=5,
                                                                           n_test=5).splits["train"].text)
    assert not np.array_equal(make_synthetic(seed=1, n_train=50, n_valid=5, n_test=5).splits["train"].labels,
                              again.splits["train"].labels)


def test_synthetic_modalities_unequal():
    data = make_synthetic(seed=0)
    tr, te = data.splits["train"], data.splits["test"]

    def probe(ms):
        def pool(sp):
            return np.concatenate([sp.features(m).sum(1) / sp.lengths[:, :1] for m in ms], 1)
        x, xt = pool(tr), pool(te)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x, xt = np.c_[(x - mu) / sd, np.ones(len(x))], np.c_[(xt - mu) / sd, np.ones(len(xt))]
        w = np.linalg.solve(x.T @ x + 100 * np.eye(x.shape[1]), x.T @ tr.labels)
        nz = te.labels != 0
        return np.mean(((xt @ w)[nz] > 0) == (te.labels[nz] > 0))

    acc = {m: probe([m]) for m in MODALITIES}
    assert acc["text"] > acc["vision"] + 0.05 and acc["vision"] > acc["audio"]
    assert acc["text"] > 0.7 and acc["audio"] < 0.62


def test_loader_batches():
    data = make_synthetic(seed=2, n_train=37, n_valid=5, n_test=5, seq_len=9, dims=(6, 3, 4))
    split = data.splits["train"]
    presence = np.ones((37, 3), dtype=bool)
    presence[::2, 1] = False
    loader = make_loader(split, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0),
                         presence=presence)
    seen = []
    for batch in loader:
        assert set(batch) == {"text", "audio", "vision", "lengths", "presence", "labels", "index"}
        b = batch["index"].shape[0]
        assert batch["text"].shape == (b, 9, 6) and batch["audio"].shape == (b, 9, 3)
        assert batch["vision"].dtype == torch.float32 and batch["lengths"].dtype == torch.int64
        assert batch["presence"].shape == (b, 3) and batch["presence"].dtype == torch.bool
        assert batch["labels"].shape == (b,) and batch["index"].dtype == torch.int64
        gone = ~batch["presence"][:, 1]
        assert (batch["audio"][gone] == 0).all() and torch.equal(gone, batch["index"] % 2 == 0)
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(37))
    assert split.audio[0].any()  # the split itself is untouched
    ds = MultimodalTensorDataset(split)
    assert ds.features["text"].data_ptr() == torch.from_numpy(split.text).data_ptr()  # no copy
    assert ds[3]["text"].shape == (1, 9, 6) and ds[[0, 5]]["presence"].all()
    order = [b["index"].tolist() for b in make_loader(split, 10, shuffle=False)]
    assert order[0] == list(range(10)) and len(order) == 4


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "datasets", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_cli_synthetic():
    res = run_cli("synthetic")
    assert res.returncode == 0, res.stderr
    assert "format:   synthetic" in res.stdout and "train n=1284" in res.stdout
    assert "ids unique across splits: True" in res.stdout


@pytest.mark.slow
def test_cli_bad_file(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04\x95garbage")
    res = run_cli(str(bad))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "bad.pkl" in res.stderr
    res = run_cli(str(tmp_path / "absent.pkl"))
    assert res.returncode != 0 and "Traceback" not in res.stderr and "no such file" in res.stderr
    res = run_cli("")  # was: "error: : no such file or folder"
    assert res.returncode == 2 and "the path is empty" in res.stderr


def _spread(order: np.ndarray, key: np.ndarray, batch_size: int) -> float:
    """Mean over the full batches of (longest - shortest key) within a batch."""
    n = len(order) // batch_size * batch_size
    k = key[order[:n]].reshape(-1, batch_size)
    return float((k.max(1) - k.min(1)).mean())


def test_length_bucketed_batches_hold_similar_lengths_and_every_row_once():
    rng = np.random.default_rng(0)
    n, bs = 5000, 32  # more rows than one window (64 batches), and a last partial batch of 8
    lengths = rng.integers(1, 501, size=(n, 3))
    order = rng.permutation(n)
    out = length_bucketed(order, lengths, bs, torch.Generator().manual_seed(1))
    assert sorted(out.tolist()) == list(range(n))
    key = lengths.max(1)
    assert _spread(out, key, bs) < 0.1 * _spread(order, key, bs)
    assert np.array_equal(out[-(n % bs):], order[-(n % bs):])  # the partial batch: the shuffled order's last rows
    again = length_bucketed(order, lengths, bs, torch.Generator().manual_seed(1))
    other = length_bucketed(order, lengths, bs, torch.Generator().manual_seed(2))
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    assert sorted(other.tolist()) == list(range(n))


def test_a_split_the_card_cannot_take_stays_on_the_host(monkeypatch):
    # the free-memory estimate can be too kind (memory torch holds for CUDA graphs, fragments): the
    # copy's out-of-memory error leaves the split on the host, gathered through pinned memory
    from datasets import SplitTensors

    def full_card(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.07 GiB")

    monkeypatch.setattr(torch.Tensor, "to", full_card)
    split = make_synthetic(seed=0, n_train=8, n_valid=4, n_test=4, seq_len=3, dims=(4, 3, 2)).splits["train"]
    source = SplitTensors(split, "cuda", resident=True)
    assert not source.resident and source.pin
    assert all(t.device.type == "cpu" for t in source.tensors.values())


def test_to_device_leaves_a_host_tensor_where_it_is_on_the_cpu():
    from datasets.batching import to_device

    x = torch.arange(6)
    assert to_device(x, torch.device("cpu")) is x


@CUDA
def test_to_device_reaches_the_card_without_a_wait_and_from_a_copy_of_its_own():
    # a non_blocking copy from pageable memory may wait for the queued work; through pinned memory it
    # returns at once, and the host tensor may change (or be freed) without changing what arrives
    import time

    from datasets.batching import to_device

    x = torch.arange(100_000)
    to_device(x, torch.device("cuda"))  # warm: the pinned pool's first block
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000_000)  # queued work: on the order of a second of GPU time
    end.record()
    t = time.perf_counter()
    y = to_device(x, torch.device("cuda"))
    returned_ms = 1000 * (time.perf_counter() - t)
    x.zero_()
    torch.cuda.synchronize()
    assert returned_ms < start.elapsed_time(end) / 4
    assert y.device.type == "cuda" and torch.equal(y.cpu(), torch.arange(100_000))


def test_length_bucketed_leaves_out_a_random_row_for_a_batch_of_one_not_the_longest():
    # was: the partial batch took the longest rows of the last window, so with n % batch_size == 1 (the
    # trainer drops a batch of one) the longest row of a small training split was never trained on
    n, bs = 65, 16
    lengths = np.tile(np.arange(1, n + 1)[:, None], (1, 3))  # row i has length i + 1: row 64 is the longest
    left_out = []
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        order = epoch_order(n, g).numpy()
        left_out.append(int(length_bucketed(order, lengths, bs, g)[-1]))
    assert left_out.count(n - 1) < 20 and len(set(left_out)) > 30, sorted(set(left_out))


@pytest.mark.parametrize("levels", [0, 8])
def test_trim_to_longest_cuts_only_padding_and_with_levels_takes_few_shapes(levels):
    # exact (levels 0): each modality cut to its longest row; with levels: one fraction k / levels of
    # every modality's padded length, the least that holds each longest row, so at most `levels` shapes
    rng = np.random.default_rng(0)
    padded = {"text": 50, "audio": 500, "vision": 375}
    shapes = set()
    for _ in range(300):
        frac = rng.uniform(0.05, 1.0, (16, 1)) ** rng.uniform(0.5, 3.0)  # batches short and long
        lengths = np.maximum(1, np.round(frac * list(padded.values()))).astype(np.int64)
        lengths[:, 0] = np.minimum(50, lengths[:, 0] + rng.integers(0, 3, 16))  # text a little off
        batch = {m: torch.randn(16, L, 2) for m, L in padded.items()}
        full = {m: x.clone() for m, x in batch.items()}
        out = trim_to_longest(batch, lengths, levels)
        kept = tuple(out[m].shape[1] for m in padded)
        for j, (m, L) in enumerate(padded.items()):
            longest = lengths[:, j].max()
            assert longest <= kept[j] <= L and torch.equal(out[m], full[m][:, :kept[j]])
            assert out[m].is_contiguous()
            if levels == 0:
                assert kept[j] == longest
        if levels:
            k = max(-(-levels * int(lengths[:, j].max()) // L) for j, L in enumerate(padded.values()))
            assert kept == tuple(-(-k * L // levels) for L in padded.values())
        shapes.add(kept)
    assert 1 < len(shapes) <= (levels or 10 ** 6)


def test_datasets_command_on_a_name_asks_for_the_path(capsys):
    # was: "pass --data_path PATH", a flag this command does not have
    from datasets.__main__ import main

    assert main(["mosei"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give the path of its MMSA/MulT pickle or .csd folder" in err[0], err
    assert "--data_path" not in err[0]
