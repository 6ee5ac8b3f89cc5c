"""Torch side: a batched-fetch Dataset over a Split, the loader, and presence application.

A batch is a dict: "text" (B, Lt, Dt), "audio" (B, La, Da), "vision" (B, Lv, Dv) float32,
"lengths" (B, 3) int64, "presence" (B, 3) bool, "labels" (B,) float32, "index" (B,) int64 rows.

``SplitTensors`` is the training path: the split's arrays wrapped once (no copy), on the compute
device when they fit there, and batches gathered with index tensors (``index_select``), so a step
never copies more than its own rows and never indexes on the host when the data is resident.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .types import MODALITIES, Split


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without a copy; read-only arrays (a memory-mapped feature cache) are
    only ever read here, so torch's warning about them does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``. A host tensor goes to CUDA through a pinned copy without waiting: a copy
    from pageable memory, even ``non_blocking``, may wait for the work queued before it. ``x`` may
    change at once unless it is pinned already (then it is its own pinned copy)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def apply_presence(batch: dict, presence: torch.Tensor) -> dict:
    """A new batch with ``presence`` (B, 3) bool under "presence" and missing modalities zeroed.

    Features are multiplied by the mask (new tensors); the input batch and its tensors are untouched.
    """
    presence = presence.to(torch.bool)
    out = dict(batch)
    out["presence"] = presence
    for j, m in enumerate(MODALITIES):
        x = batch[m]
        mask = presence[:, j].to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        out[m] = x * mask
    return out


class MultimodalTensorDataset(Dataset):
    """Wraps a Split without copying (torch.from_numpy); items are whole batches.

    ``dataset[indices]`` with a list or 1-D tensor of row numbers returns a batch dict (see module
    docstring); an int returns a batch of one. ``presence`` (N, 3) bool defaults to all present;
    rows' missing modalities are zeroed on fetch.
    """

    def __init__(self, split: Split, presence: np.ndarray | None = None):
        self.split = split
        self.features = {m: _as_tensor(split.features(m)) for m in MODALITIES}
        self.lengths = torch.from_numpy(np.ascontiguousarray(split.lengths, dtype=np.int64))
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))
        if presence is None:
            presence = np.ones((split.n, 3), dtype=bool)
        presence = np.asarray(presence, dtype=bool)
        if presence.shape != (split.n, 3):
            raise ValueError(f"presence must have shape ({split.n}, 3), got {presence.shape}")
        self.presence = torch.from_numpy(presence)
        self.all_present = bool(presence.all())

    def __len__(self) -> int:
        return self.split.n

    def __getitem__(self, indices) -> dict:
        if isinstance(indices, int | np.integer):
            indices = [int(indices)]
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        batch = {m: self.features[m][index].float() for m in MODALITIES}  # float16 storage -> float32
        batch["lengths"] = self.lengths[index]
        batch["labels"] = self.labels[index]
        batch["index"] = index
        presence = self.presence[index]
        if self.all_present:  # nothing to zero: skip the multiply
            batch["presence"] = presence
            return batch
        return apply_presence(batch, presence)


def make_loader(split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                presence: np.ndarray | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader of batch dicts (batched fetch: BatchSampler as sampler, batch_size=None, no workers).

    ``drop_last`` drops a final incomplete batch (training uses it to avoid a batch of one,
    which BatchNorm cannot normalise)."""
    dataset = MultimodalTensorDataset(split, presence)
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


RESIDENT_FRACTION = 0.5  # data goes onto a CUDA device when it needs at most this share of its free memory


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64: the row order ``make_loader(shuffle=True)`` gives with this generator, drawn the same
    way (``RandomSampler``), so either path gives identical batches for the same seed."""
    return torch.tensor(list(RandomSampler(range(n), generator=generator)), dtype=torch.long)


def batch_slices(n: int, batch_size: int, drop_last: bool) -> list[slice]:
    """Positions of the batches of an epoch over ``n`` rows, as ``BatchSampler`` cuts them."""
    stop = n - n % batch_size if drop_last else n
    return [slice(i, min(i + batch_size, n)) for i in range(0, stop, batch_size)]


def trim_to_longest(batch: dict[str, torch.Tensor], lengths: np.ndarray, levels: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` with each modality cut to the longest true length among its rows, given on the host
    as ``lengths (B, 3)``: the steps cut are padding in every row. A cut modality is made contiguous
    (a copy of what is left, small next to encoding it), as the recurrent kernels want.

    ``levels`` > 0: every modality keeps the same fraction ``k / levels`` of its padded length
    (rounded up), with the least ``k`` that holds each modality's longest row, so batches take at
    most ``levels`` shapes (what a compiled forward needs: one graph per shape).
    """
    padded = [batch[m].shape[1] for m in MODALITIES]
    longest = [max(1, int(lengths[:, j].max())) for j in range(len(MODALITIES))]
    if levels > 0:
        k = max(-(-levels * n // L) for n, L in zip(longest, padded))
        longest = [-(-k * L // levels) for L in padded]
    for m, keep, L in zip(MODALITIES, longest, padded):
        if keep < L:
            batch[m] = batch[m][:, :keep].contiguous()
    return batch


# batch lengths under --compile with --length_buckets (``trim_to_longest(levels=)``): the compiled graphs
# take the lengths as dynamic sizes, but CUDA graphs (``reduce-overhead``) are recorded once per shape;
# 7 lengths and the epoch's last, smaller batch (left at full length) are 8 shapes, the most torch
# records without warning (torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit)
BUCKET_LEVELS = 7
BUCKET_WINDOW = 64  # batches whose rows are sorted by length together (``length_bucketed``)


def length_bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int, generator: torch.Generator
                    ) -> np.ndarray:
    """An epoch's row ``order (n,)`` rearranged so that each batch holds rows of similar length.

    The shuffled order's last ``n % batch_size`` rows stay last as they are: the epoch's partial
    batch, dropped when it would be a batch of one, so the row dropped is a random one (not the
    longest of a window). The other rows are cut into windows of ``BUCKET_WINDOW`` batches; each window
    is sorted by the rows' longest modality (``lengths (N, 3)``), and the full batches so formed are
    shuffled with ``generator`` (``batch_slices`` cuts the same slices as before). Every row appears
    once; which rows share a batch still varies per epoch.
    """
    n_full = len(order) // batch_size
    head, rest = order[:n_full * batch_size], order[n_full * batch_size:]
    key = np.asarray(lengths).max(1)[head]
    window = BUCKET_WINDOW * batch_size
    sorted_head = np.concatenate([head[i:i + window][np.argsort(key[i:i + window], kind="stable")]
                                  for i in range(0, len(head), window)]) if len(head) else head
    shuffle = torch.randperm(n_full, generator=generator).numpy()
    return np.concatenate([sorted_head.reshape(n_full, batch_size)[shuffle].reshape(-1), rest])


class SplitTensors:
    """A Split's arrays as tensors for gathering batches on ``device``.

    On CUDA the arrays are copied to the device once when they fit (``resident``: at most
    RESIDENT_FRACTION of its free memory, or asked for by the argument; a copy that runs out of
    memory leaves them on the host); otherwise they stay on the
    host (``torch.from_numpy``, no copy) and each gathered batch travels through pinned memory
    with ``non_blocking``. Features stored as float16 are gathered as float16 and cast to float32
    on ``device``. ``keep`` (``datasets.frame_keep``): per modality an (N, L_m) bool of the time
    steps to keep; the others are zeroed in each gathered batch (frame-level missing without a copy
    of the split).
    """

    def __init__(self, split: Split, device: torch.device | str = "cpu", resident: bool | None = None,
                 keep: dict[str, np.ndarray] | None = None):
        self.device = torch.device(device)
        host = {m: _as_tensor(split.features(m)) for m in MODALITIES}
        if keep is not None:  # frame-level erasure (datasets.frame_keep): (N, L_m) bool per modality
            host.update({f"{m}_keep": torch.from_numpy(np.ascontiguousarray(keep[m], dtype=bool)) for m in MODALITIES})
        host["lengths"] = torch.from_numpy(np.ascontiguousarray(split.lengths, dtype=np.int64))
        host["labels"] = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))
        if self.device.type == "cpu":
            resident = True
        elif resident is None:  # free: the card's, plus what torch's allocator holds unused (an earlier seed's)
            free = (torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device)
                    - torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else 0
            resident = sum(t.nbytes for t in host.values()) <= RESIDENT_FRACTION * free
        self.tensors = host
        if resident:
            try:
                self.tensors = {k: v.to(self.device) for k, v in host.items()}
            except torch.cuda.OutOfMemoryError:  # the estimate above was too kind: stay on the host
                resident = False
                torch.cuda.empty_cache()
        self.resident = bool(resident)
        self.pin = not self.resident and self.device.type == "cuda"

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of rows ``index`` (1-D int64, any device) on ``device``, every modality present.
        Data on the host is best given host indices: a CUDA ``index`` is copied back and waited for."""
        home = next(iter(self.tensors.values())).device
        index = index.to(home, non_blocking=home.type == "cuda")  # never non-blocking to the host: read at once
        batch = {k: v.index_select(0, index) for k, v in self.tensors.items()}
        batch["index"] = index
        if self.pin:
            batch = {k: to_device(v, self.device) for k, v in batch.items()}
        for m in MODALITIES:
            if batch[m].dtype != torch.float32:
                batch[m] = batch[m].float()
            if f"{m}_keep" in batch:
                batch[m] = batch[m] * batch.pop(f"{m}_keep").unsqueeze(-1)
        batch["presence"] = torch.ones(len(index), 3, dtype=torch.bool, device=self.device)
        return batch
