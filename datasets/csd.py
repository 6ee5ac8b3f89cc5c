"""Reader for CMU-MultimodalSDK computational sequences (a folder of ``.csd`` HDF5 files).

Files are mapped to modalities by name (``text/audio/vision/labels`` or the official names such as
``CMU_MOSI_COVAREP.csd``, ``CMU_MOSI_Visual_Facet_41.csd``, ``CMU_MOSI_TimestampedWordVectors.csd``,
``CMU_MOSI_Opinion_Labels.csd``) or by an explicit ``mapping``. The SDK aligns every sequence to the
label sequence; the aligned keys ``video[k]`` become ids ``video$_$(k+1)`` as in the MMSA pickles.

Collapse: after alignment a segment holds the feature rows that overlap it, each clipped to the
segment. Segment-level features (one row per label segment, as in the shared folder) are averaged
with weights equal to each piece's overlap with the segment: real MOSI segments overlap, so ~8% of
segments also receive a sliver of a neighbour's row. Frame-level features (several rows per
segment) stay a sequence in time order; beyond ``max_len`` rows they are pooled into ``max_len``
consecutive groups (overlap-weighted means). Splits come from ``folds.json`` beside the files or,
without one, from the SDK's standard CMU-MOSI / CMU-MOSEI folds (with a warning).

Zero-length label segments (the official CMU-MOSI file has ``2WGyTLYerpo[43]`` at [127.213,
127.213]) are skipped by the SDK's ``align``; they are kept here with the feature rows that sit at
that instant (rows with exactly that interval, else the rows whose interval contains it). Every
label segment that is still left out is named with the reason, in a warning and in ``data.notes``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re

import numpy as np

from .errors import DataError
from .types import MODALITIES, SPLITS, MultimodalData, Split
from .validate import build_split

log = logging.getLogger(__name__)

LABELS = "labels"
ROLES = (*MODALITIES, LABELS)
# first match wins, tried per role in this order; matched against the lower-cased file stem
NAME_PATTERNS: dict[str, tuple[str, ...]] = {
    LABELS: (r"label",),
    "text": (r"wordvector", r"glove", r"bert", r"^text", r"text"),
    "audio": (r"covarep", r"opensmile", r"wav2vec", r"^audio", r"audio", r"acoustic"),
    "vision": (r"facet", r"openface", r"^vision", r"visual", r"vision", r"video"),
}
METADATA_TEMPLATE = ("root name", "computational sequence description", "computational sequence version",
                     "alignment compatible", "dataset name", "dataset version", "creator", "contact",
                     "featureset bib citation", "dataset bib citation")


@contextlib.contextmanager
def quiet_sdk():
    """Swallow the SDK's prints and tqdm bars (kept at DEBUG level in our log)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield
    if buf.getvalue():
        log.debug("mmsdk output:\n%s", buf.getvalue())


def _sdk():
    try:
        from mmsdk import mmdatasdk
    except ImportError as err:  # pragma: no cover - mmsdk is a requirement
        raise DataError("reading .csd folders needs the CMU-MultimodalSDK: pip install cmu-multimodal-sdk") from err
    return mmdatasdk


def open_sequence(path: str):
    """An mmsdk computational_sequence read from ``path`` (DataError when unreadable)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    md = _sdk()
    try:
        with quiet_sdk():
            return md.computational_sequence(path)
    except Exception as err:  # the SDK raises bare RuntimeError/KeyError/IndexError on bad files
        raise DataError(f"{path}: not a readable computational sequence ({type(err).__name__}: {err})") from None


def read_sequence(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{video id: (intervals (n, 2) float64, features (n, D))} of one .csd file."""
    seq = open_sequence(os.fspath(path))
    try:
        return {vid: (np.asarray(e["intervals"][()], dtype=np.float64), np.asarray(e["features"][()]))
                for vid, e in seq.data.items()}
    finally:
        if getattr(seq, "h5handle", None) is not None:
            seq.h5handle.close()


def deploy_sequence(path: str | os.PathLike, root_name: str,
                    data: dict[str, tuple[np.ndarray, np.ndarray]], description: str = "") -> None:
    """Write {video: (intervals (n, 2), features (n, D))} with the SDK's own ``deploy``."""
    md = _sdk()
    seq = md.computational_sequence(root_name)
    seq.setData({vid: {"intervals": np.asarray(iv, dtype=np.float64), "features": np.asarray(ft)}
                 for vid, (iv, ft) in data.items()}, root_name)
    meta = {k: "" for k in METADATA_TEMPLATE}
    meta.update({"root name": root_name, "computational sequence description": description or root_name,
                 "computational sequence version": "1.0", "alignment compatible": "True",
                 "dataset version": "1.0", "creator": "AttentionRobust", "contact": "none"})
    seq.setMetadata(meta, root_name)
    with quiet_sdk():
        seq.deploy(os.fspath(path))


def map_files(folder: str, mapping: dict[str, str] | None = None) -> dict[str, str]:
    """{'text'|'audio'|'vision'|'labels': path} for the .csd files in ``folder``.

    ``mapping`` (role -> file name or path) overrides name matching for the roles it names.
    """
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".csd"))
    found: dict[str, str] = {}
    for role, fname in (mapping or {}).items():
        if role not in ROLES:
            raise DataError(f"{folder}: unknown role '{role}' in the file map (expected {ROLES})")
        found[role] = fname if os.path.isabs(fname) else os.path.join(folder, fname)
    taken = {os.path.basename(p) for p in found.values()}
    for role in ROLES:
        if role in found:
            continue
        for pattern in NAME_PATTERNS[role]:
            hits = [f for f in files if f not in taken and re.search(pattern, f[:-4].lower())
                    and not (role == "text" and "timestampedwords" in f.lower())]
            if len(hits) > 1:
                raise DataError(f"{folder}: several files could be the {role} sequence ({', '.join(hits)}); "
                                f"keep one of them in the folder (from Python: mapping={{'{role}': FILE}})")
            if hits:
                found[role] = os.path.join(folder, hits[0])
                taken.add(hits[0])
                break
    missing = [r for r in ROLES if r not in found]
    if missing:
        raise DataError(f"{folder}: no .csd file found for {', '.join(missing)} (files: {', '.join(files) or 'none'}); "
                        "name them text/audio/vision/labels (from Python: mapping={role: FILE})")
    return found


def read_folds(folder: str, videos: list[str], notes: list[str] | None = None) -> dict[str, list[str]]:
    """Video ids per split: folds.json beside the files, else the SDK's standard MOSI/MOSEI folds
    (a warning, also appended to ``notes``, says so)."""
    path = os.path.join(folder, "folds.json")
    if os.path.exists(path):
        try:
            with open(path) as fh:
                folds = json.load(fh)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable folds file ({err})") from None
        for s in SPLITS:
            if not isinstance(folds, dict) or not isinstance(folds.get(s), list):
                raise DataError(f"{path}: missing split '{s}' (a list of video ids)")
        return {s: [str(v) for v in folds[s]] for s in SPLITS}
    md = _sdk()
    best, best_hits, best_name = None, 0, ""
    for name, mod in (("CMU-MOSI", md.cmu_mosi.standard_folds), ("CMU-MOSEI", md.cmu_mosei.standard_folds)):
        std = {"train": mod.standard_train_fold, "valid": mod.standard_valid_fold, "test": mod.standard_test_fold}
        hits = len(set(videos) & {v for f in std.values() for v in f})
        if hits > best_hits:
            best, best_hits, best_name = std, hits, name
    if best is None:
        raise DataError(f"{folder}: no folds.json and the videos match neither the CMU-MOSI nor the CMU-MOSEI "
                        "standard folds")
    msg = (f"{folder}: no folds.json; splitting by the CMU-MultimodalSDK's standard {best_name} folds "
           f"({best_hits} of {len(videos)} videos in them); add folds.json to choose the splits")
    log.warning(msg)
    if notes is not None:
        notes.append(msg)
    return {s: list(v) for s, v in best.items()}


def collapse(intervals: np.ndarray, features: np.ndarray, segment_level: bool, max_len: int) -> np.ndarray:
    """(k, D) float32 rows of one aligned segment from its P pieces (intervals (P, 2), features (P, D))."""
    w = np.clip(intervals[:, 1] - intervals[:, 0], 0.0, None)
    feats = features.astype(np.float64).reshape(features.shape[0], -1)
    if segment_level or feats.shape[0] == 1:
        groups = [np.arange(feats.shape[0])]
    else:
        order = np.argsort(intervals[:, 0], kind="stable")
        feats, w = feats[order], w[order]
        groups = np.array_split(np.arange(feats.shape[0]), min(max_len, feats.shape[0]))
    rows = []
    for g in groups:
        wg = w[g]
        rows.append(feats[g].mean(0) if wg.sum() <= 0 else (wg[:, None] * feats[g]).sum(0) / wg.sum())
    return np.stack(rows).astype(np.float32)


def sdk_epsilon() -> float:
    """The SDK's alignment tolerance in seconds: shorter segments and overlaps are skipped by ``align``."""
    from mmsdk.mmdatasdk.dataset import dataset as sdk_dataset

    return float(getattr(sdk_dataset, "epsilon", 1e-3))


def rows_at_instant(intervals: np.ndarray, features: np.ndarray, t: float,
                    eps: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of a video that sit at instant ``t``, as (intervals (k, 2) all [t, t], features (k, D)).

    Rows whose own interval is [t, t] when there are any, else every row whose interval contains t;
    None when no row does.
    """
    hit = (intervals[:, 0] - eps <= t) & (t <= intervals[:, 1] + eps)
    exact = hit & (np.abs(intervals[:, 1] - intervals[:, 0]) < eps)
    sel = exact if exact.any() else hit
    if not sel.any():
        return None
    return np.full((int(sel.sum()), 2), t), np.asarray(features)[sel]


def read_csd(folder: str, name: str, mapping: dict[str, str] | None = None, max_len: int = 50) -> MultimodalData:
    """MultimodalData from a folder of .csd files aligned to its label sequence."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder of .csd files")
    paths = map_files(folder, mapping)
    md = _sdk()
    seqs = {role: open_sequence(paths[role]) for role in ROLES}
    for role, seq in seqs.items():
        if len(seq.data) == 0:
            raise DataError(f"{paths[role]}: the {role} sequence holds no videos")
        first = next(iter(seq.data.values()))
        if np.asarray(first["features"][:1]).dtype.kind not in "fiub":
            raise DataError(f"{paths[role]}: {role} features are not numeric "
                            f"(dtype {first['features'].dtype}); use a feature sequence, not raw words")
    label_rows = {vid: e["intervals"].shape[0] for vid, e in seqs[LABELS].data.items()}
    segment_level = {m: all(seqs[m].data[v]["intervals"].shape[0] == label_rows[v]
                            for v in label_rows if v in seqs[m].data) for m in MODALITIES}
    eps = sdk_epsilon()
    label_data = {vid: (np.asarray(e["intervals"][()], dtype=np.float64), np.asarray(e["features"][()]))
                  for vid, e in seqs[LABELS].data.items()}
    in_file = {m: set(seqs[m].data) for m in MODALITIES}  # align removes videos some sequence lacks
    instants = {f"{vid}[{i}]": (vid, i) for vid, (iv, _) in label_data.items()
                for i in np.flatnonzero(np.abs(iv[:, 1] - iv[:, 0]) < eps)}
    # key -> role -> (intervals, features) of the zero-length segments the SDK's align skips
    extra: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    reasons: dict[str, str] = {}
    for key, (vid, i) in instants.items():
        iv, ft = label_data[vid]
        t = float(iv[i, 0])
        got = {m: rows_at_instant(np.asarray(seqs[m].data[vid]["intervals"][()], dtype=np.float64),
                                  seqs[m].data[vid]["features"][()], t, eps)
               for m in MODALITIES if vid in in_file[m]}
        lacking = [m for m in MODALITIES if got.get(m) is None]
        if lacking:
            reasons[key] = f"zero-length interval [{t:.3f}, {t:.3f}] and no {'/'.join(lacking)} row at that instant"
        else:
            extra[key] = {**got, LABELS: (iv[i:i + 1], ft[i:i + 1])}
    try:
        with quiet_sdk():
            ds = md.mmdataset.__new__(md.mmdataset)  # from the sequences already opened above
            ds.computational_sequences = dict(seqs)
            ds.align(LABELS)
    except DataError:
        raise
    except Exception as err:  # SDK failures come as bare RuntimeError etc.
        raise DataError(f"{folder}: aligning to {paths[LABELS]} failed ({type(err).__name__}: {err})") from None

    def piece(role: str, k: str) -> tuple[np.ndarray, np.ndarray]:
        """(intervals, features) of segment ``k`` in sequence ``role`` after alignment."""
        if k in extra:
            return extra[k][role]
        return np.asarray(ds[role].data[k]["intervals"]), np.asarray(ds[role].data[k]["features"])

    keys = [k for k in ds[LABELS].keys() if all(k in ds[m].data for m in MODALITIES)] + list(extra)
    notes: list[str] = []
    if extra:
        msg = (f"{folder}: kept {len(extra)} zero-length label segment(s) that the SDK's align skips, with the "
               "feature rows at that instant: " + ", ".join(f"{k} at {extra[k][LABELS][0][0, 0]:.3f} s"
                                                           for k in sorted(extra)[:10]))
        log.info(msg)
        notes.append(msg)
    kept = set(keys)
    for vid, (iv, _) in label_data.items():
        for i in range(iv.shape[0]):
            k = f"{vid}[{i}]"
            if k in kept or k in reasons:
                continue
            absent = [m for m in MODALITIES if vid not in in_file[m]]
            reasons[k] = (f"video absent from the {'/'.join(absent)} file" if absent else
                          "no " + "/".join(m for m in MODALITIES if k not in ds[m].data)
                          + f" feature overlaps [{iv[i, 0]:.3f}, {iv[i, 1]:.3f}]")
    if reasons:
        listed = sorted(reasons)
        msg = (f"{folder}: dropped {len(reasons)} of {sum(len(iv) for iv, _ in label_data.values())} label segments: "
               + "; ".join(f"{k} ({reasons[k]})" for k in listed[:10]) + ("; ..." if len(listed) > 10 else ""))
        log.warning(msg)
        notes.append(msg)

    def parse(k: str) -> tuple[str, int]:
        vid, idx = k.rsplit("[", 1)
        return vid, int(idx.rstrip("]"))

    by_video: dict[str, list[tuple[int, str]]] = {}
    for k in keys:
        vid, idx = parse(k)
        by_video.setdefault(vid, []).append((idx, k))
    folds = read_folds(folder, sorted(by_video), notes)
    assigned = {v for f in folds.values() for v in f}
    unassigned = sorted(set(by_video) - assigned)
    if unassigned:
        msg = (f"{folder}: {len(unassigned)} videos are in no fold and are left out: "
               + ", ".join(unassigned[:10]) + (", ..." if len(unassigned) > 10 else ""))
        log.warning(msg)
        notes.append(msg)

    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    meta: dict[str, tuple[list[float], list[str]]] = {}
    for s in SPLITS:
        split_keys = [k for v in sorted(set(folds[s]) & set(by_video)) for _, k in sorted(by_video[v])]
        rows[s] = {m: [collapse(*piece(m, k), segment_level[m], max_len) for k in split_keys] for m in MODALITIES}
        labels = [float(piece(LABELS, k)[1].reshape(-1)[0]) for k in split_keys]
        ids = [f"{parse(k)[0]}$_${parse(k)[1] + 1}" for k in split_keys]
        meta[s] = (labels, ids)
    seq_len = {m: max((r.shape[0] for s in SPLITS for r in rows[s][m]), default=1) for m in MODALITIES}
    splits: dict[str, Split] = {}
    for s in SPLITS:
        labels, ids = meta[s]
        feats, lengths = {}, {}
        for m in MODALITIES:
            pieces = rows[s][m]
            dim = pieces[0].shape[1] if pieces else 1
            x = np.zeros((len(pieces), seq_len[m], dim), dtype=np.float32)
            for i, r in enumerate(pieces):
                if r.shape[1] != dim:
                    raise DataError(f"{paths[m]} [split '{s}']: feature dims differ between videos "
                                    f"({r.shape[1]} vs {dim})")
                x[i, :r.shape[0]] = r
            feats[m], lengths[m] = x, [r.shape[0] for r in pieces]
        splits[s] = build_split(folder, s, feats, np.asarray(labels, dtype=np.float32), LABELS,
                                ids=np.asarray(ids, dtype=str), lengths=lengths)
    for seq in seqs.values():
        if getattr(seq, "h5handle", None) is not None:
            seq.h5handle.close()
    return MultimodalData(name=name, format="csd", source=folder, splits=splits, notes=notes)
