"""The embedded synthetic data set: MOSI-shaped, deterministic from a seed, with real signal.

Generative story, per sample i (all draws from ``np.random.default_rng([seed, split])``):

1. Sentiment. A latent sentiment s ~ N(0, 1). Five "annotators" each give
   clip(round(1.8 s + N(0, 0.5)), -3, 3); the label is their mean (a multiple of 0.2 in [-3, 3],
   ~5% exactly 0, like MOSI's averaged scores).
2. Sarcasm. Each sample carries an audio cue a_i and a visual cue v_i, both +1 with probability 0.3
   and -1 otherwise. The sample is sarcastic when both are +1 (9%): then the TEXT shows -s instead
   of s. Neither cue alone reveals sarcasm well; only audio and vision together do.
3. Per-modality evidence g_m = (sign-flipped for text when sarcastic) s + sigma_m * xi, xi ~ N(0, 1),
   with sigma = 0.3 (text), 1.3 (vision), 3.0 (audio) and a feature gain of 3 (text), 1.2 (vision),
   1 (audio): text strongest, vision medium, audio weak.
   With probability 0.15 per sample and modality, the modality is UNRELIABLE: its sigma is x4 and its
   per-step noise x2, so a model that estimates per-sample uncertainty should down-weight it.
4. Sequences. One true length per sample, uniform in 10..seq_len (text, audio and vision share it, as
   in MMSA aligned data). Over the valid steps a temporal envelope e_t (a Gaussian bump at a random
   centre, normalised to mean 1) carries the evidence:
   x_m[t] = e_t * gain_m * (g_m * w_m + cue_m * c_m) + nu_m + tau_m * eps_t, where w_m and c_m are
   fixed random unit directions (one seed for the whole data set), nu_m a per-sample "speaker style" offset
   (N(0, 0.5) per feature, constant over time) and eps_t per-step noise. Steps after the length are 0.

Generated per split in chunks of rows straight into float32 arrays, so MOSEI-sized sets
(16326 x 500 x 768) need no copies beyond the output.
"""

from __future__ import annotations

import numpy as np

from .types import MODALITIES, SPLITS, MultimodalData, Split

SIGMA = {"text": 0.3, "audio": 3.0, "vision": 1.3}  # per-sample evidence noise
GAIN = {"text": 3.0, "audio": 1.0, "vision": 1.2}  # amplitude of the evidence in the features
STEP_NOISE = {"text": 1.0, "audio": 1.0, "vision": 1.0}  # per-step noise scale
UNRELIABLE_P = 0.15
UNRELIABLE_SIGMA = 4.0
UNRELIABLE_STEP = 2.0
CUE_P = 0.3
STYLE = 0.5
MIN_LEN = 10
CHUNK = 256


def _directions(seed: int, dims: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed (signal, cue) unit directions per modality, shared by all splits."""
    rng = np.random.default_rng([seed, 1000])
    out = {}
    for m in MODALITIES:
        w = rng.standard_normal((2, dims[m]))
        w[0] /= np.linalg.norm(w[0])
        w[1] -= (w[1] @ w[0]) * w[0]  # cue direction orthogonal to the signal (when D > 1)
        norm = np.linalg.norm(w[1])
        w[1] = w[1] / norm if norm > 1e-8 else w[0]
        out[m] = (w[0].astype(np.float32), w[1].astype(np.float32))
    return out


def _split(seed: int, index: int, name: str, n: int, seq_len: int, dims: dict[str, int],
           directions: dict[str, tuple[np.ndarray, np.ndarray]]) -> Split:
    rng = np.random.default_rng([seed, index])
    s = rng.standard_normal(n)
    votes = np.clip(np.round(1.8 * s[:, None] + 0.5 * rng.standard_normal((n, 5))), -3, 3)
    labels = votes.mean(1).astype(np.float32)
    cue = {"audio": np.where(rng.random(n) < CUE_P, 1.0, -1.0), "vision": np.where(rng.random(n) < CUE_P, 1.0, -1.0)}
    cue["text"] = np.zeros(n)
    sarcastic = (cue["audio"] > 0) & (cue["vision"] > 0)
    lengths = rng.integers(min(MIN_LEN, seq_len), seq_len + 1, n)
    centre = rng.random(n)
    width = 0.15 + 0.35 * rng.random(n)

    feats, noise_scale = {}, {}
    for m in MODALITIES:
        unreliable = rng.random(n) < UNRELIABLE_P
        shown = np.where(sarcastic, -s, s) if m == "text" else s
        sigma = SIGMA[m] * np.where(unreliable, UNRELIABLE_SIGMA, 1.0)
        feats[m] = shown + sigma * rng.standard_normal(n)
        noise_scale[m] = STEP_NOISE[m] * np.where(unreliable, UNRELIABLE_STEP, 1.0)

    arrays = {m: np.empty((n, seq_len, dims[m]), dtype=np.float32) for m in MODALITIES}
    steps = np.arange(seq_len)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        ln = lengths[lo:hi]
        pos = steps[None, :] / np.maximum(ln[:, None] - 1, 1)  # 0..1 over the valid steps
        valid = steps[None, :] < ln[:, None]
        env = np.exp(-0.5 * ((pos - centre[lo:hi, None]) / width[lo:hi, None]) ** 2) * valid
        env /= env.sum(1, keepdims=True) / ln[:, None]  # mean 1 over valid steps
        for m in MODALITIES:
            w_sig, w_cue = directions[m]
            out = arrays[m][lo:hi]
            rng.standard_normal(out.shape, dtype=np.float32, out=out)
            out *= noise_scale[m][lo:hi, None, None].astype(np.float32)
            out += (STYLE * rng.standard_normal((hi - lo, 1, dims[m]))).astype(np.float32)
            amp = env[:, :, None].astype(np.float32)
            out += GAIN[m] * amp * (feats[m][lo:hi, None, None].astype(np.float32) * w_sig
                          + cue[m][lo:hi, None, None].astype(np.float32) * w_cue)
            out *= valid[:, :, None]
    ids = np.array([f"synthetic_{name}_{i:05d}" for i in range(n)], dtype=str)
    return Split(text=arrays["text"], audio=arrays["audio"], vision=arrays["vision"],
                 lengths=np.repeat(lengths[:, None], 3, axis=1).astype(np.int64), labels=labels,
                 ids=ids, raw_text=np.full(n, "", dtype=str))


def make_synthetic(seed: int = 0, n_train: int = 1284, n_valid: int = 229, n_test: int = 686,
                   seq_len: int = 50, dims: tuple[int, int, int] = (300, 5, 20)) -> MultimodalData:
    """The embedded data set (MOSI sizes and aligned shapes by default); see the module docstring.

    Returns MultimodalData with splits of text (N, seq_len, dims[0]), audio (N, seq_len, dims[1]),
    vision (N, seq_len, dims[2]) float32, labels (N,) in [-3, 3].
    """
    dim_map = dict(zip(MODALITIES, dims))
    directions = _directions(seed, dim_map)
    sizes = dict(zip(SPLITS, (n_train, n_valid, n_test)))
    splits = {name: _split(seed, i, name, sizes[name], seq_len, dim_map, directions)
              for i, name in enumerate(SPLITS)}
    return MultimodalData(name="synthetic", format="synthetic", source=f"synthetic(seed={seed})", splits=splits)
