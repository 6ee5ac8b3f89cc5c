"""The restricted unpickler: numpy arrays and containers load, anything executable is refused."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from datasets import DataError
from datasets.safe_pickle import load_pickle


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilOpen:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_numpy_and_containers_round_trip(tmp_path):
    obj = {"train": {"x": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "id": np.array(["a$_$1"]),
                     "lens": [np.int64(2), 3], "t": (1.5, None, True), "s": {1, 2}, "f": frozenset({3}),
                     "o": np.array(["x", "y"], dtype=object), "b": bytearray(b"ab"), "c": 1 + 2j}}
    for protocol in (2, 4, 5):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = load_pickle(path)
        np.testing.assert_array_equal(got["train"]["x"], obj["train"]["x"])
        assert got["train"]["id"][0] == "a$_$1" and got["train"]["lens"] == [2, 3]
        assert got["train"]["s"] == {1, 2} and got["train"]["c"] == 1 + 2j


@pytest.mark.parametrize("evil", [_Evil, _EvilOpen])
def test_refuses_code_execution(tmp_path, evil):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": evil(str(target))}))
    with pytest.raises(DataError) as err:
        load_pickle(path)
    assert not target.exists()
    msg = str(err.value)
    assert "refusing to unpickle" in msg and str(path) in msg and "only numpy arrays" in msg
    assert ("posix.system" in msg or "os.system" in msg) or "io.open" in msg or "builtins.open" in msg


def test_refuses_subprocess(tmp_path):
    import subprocess

    class _Sub:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "pwned")],))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([_Sub()]))
    with pytest.raises(DataError, match="refusing to unpickle subprocess.call"):
        load_pickle(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_missing(tmp_path):
    good = pickle.dumps({"a": np.zeros((10, 10), dtype=np.float32)})
    path = tmp_path / "trunc.pkl"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_pickle(path)
    (tmp_path / "junk.pkl").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="junk.pkl"):
        load_pickle(tmp_path / "junk.pkl")
    with pytest.raises(DataError, match="no such file"):
        load_pickle(tmp_path / "absent.pkl")


def test_a_torch_checkpoint_given_as_data_is_one_line_naming_what_it_is(tmp_path):
    # was: the restricted unpickler's two-line message about persistent ids
    import torch

    torch.save({"model": torch.ones(3)}, tmp_path / "best.pt")
    with pytest.raises(DataError) as err:
        load_pickle(tmp_path / "best.pt")
    assert "\n" not in str(err.value) and "a zip archive (torch.save or numpy .npz), not a pickle" in str(err.value)


def test_shared_pickle_loads(shared_pkl):
    obj = load_pickle(shared_pkl)
    assert set(obj) == {"train", "valid", "test"}
