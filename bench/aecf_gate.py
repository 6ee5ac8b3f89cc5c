"""AECF gate cost: one training step (forward, backward, AdamW step) of AttentionRobustV4 with the
gate on vs off (Config.use_aecf), batch 32, MOSI aligned shapes (length 50, dims 300/5/20).

Both models are built from the same seed and step on the same fixed batches with the same
presence masks; on/off steps are interleaved and compared by their medians. Target: <= 1.02x.
"""

from __future__ import annotations

import numpy as np
import torch

from bench import interleaved, median, spread, verdict
from datasets import apply_presence, sample_presence
from modules.registry import create_model
from training.config import Config
from training.trainer import build_optimizer, loss_terms

DIMS = {"text": 300, "audio": 5, "vision": 20}


def make_step(use_aecf: bool, batches: list[dict]):
    dev = batches[0]["labels"].device
    cfg = Config(use_aecf=use_aecf)
    torch.manual_seed(0)
    model = create_model("attention_robust_v4", cfg, DIMS).to(dev).train()
    opt = build_optimizer(cfg, model)
    state = {"i": 0}

    def step() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        out = model(batch)
        loss = sum(loss_terms(cfg, out, batch["labels"]).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return step


def fixed_batches(n: int, b: int = 32, length: int = 50) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        batch = {m: torch.randn(b, length, d, generator=g) for m, d in DIMS.items()}
        batch["lengths"] = torch.randint(10, length + 1, (b, 1), generator=g).repeat(1, 3)
        steps = torch.arange(length)[None, :, None]
        for i, m in enumerate(DIMS):
            batch[m] = batch[m] * (steps < batch["lengths"][:, i, None, None])
        batch["labels"] = torch.empty(b).uniform_(-3, 3, generator=g)
        out.append(apply_presence(batch, torch.from_numpy(sample_presence(rng, b, 0.35))))
    return out


def run(quick: bool = False, device: str = "cpu") -> dict:
    dev = torch.device(device)
    batches = [{k: v.to(dev) for k, v in b.items()} for b in fixed_batches(4)]
    reps = 20 if quick else 120
    t = interleaved({"on": make_step(True, batches), "off": make_step(False, batches)}, reps, warmup=3)
    ratio = median(t["on"]) / median(t["off"])
    print(f"train step, gate on : {spread(t['on'])}")
    print(f"train step, gate off: {spread(t['off'])}")
    print(f"gate on / off = {ratio:.3f}x  ({100 * (ratio - 1):+.1f}%)  {verdict(ratio, 1.02)}")
    return {"on_ms": 1e3 * median(t["on"]), "off_ms": 1e3 * median(t["off"]), "ratio": ratio, "reps": reps}
