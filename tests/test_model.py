"""AttentionRobustV4: shapes, the encode/fuse contract, no leakage of missing modalities, training."""

from __future__ import annotations

import itertools

import pytest
import torch

from attention_robust_v4 import MODALITIES, AttentionRobustV4
from modules.losses import task_loss
from modules.registry import create_model
from tests.helpers import DIMS, make_batch
from training.config import Config
from training.trainer import loss_terms

PATTERNS = [p for p in itertools.product([False, True], repeat=3) if any(p)]
SWITCHES = ["variational", "use_gated_fusion", "use_proxy_attention", "use_aecf", "use_vae", "use_contrastive"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(**kw) -> Config:
    base = {"hidden_dim": 32, "num_heads": 4, "dropout": 0.1, **dict.fromkeys(SWITCHES, True)}  # every part on
    base.update(kw)
    cfg = Config(**base)
    cfg.validate()
    return cfg


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
@pytest.mark.parametrize("lengths", [(50, 50, 50), (20, 37, 45), (1, 1, 1)])
def test_output_shapes(encoder: str, lengths: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(encoder=encoder, num_classes=3), DIMS)
    batch = make_batch(4, lengths)
    states = model.encode(batch)
    for i, m in enumerate(MODALITIES):
        assert states[f"{m}_keys"].shape == states[f"{m}_values"].shape == (4, 32, lengths[i])  # channels-major
        assert states[f"{m}_token_mask"].shape == (4, lengths[i])
        assert states[f"{m}_pooled_input"].shape == (4, DIMS[m])
        for key in ("mu", "logvar", "std", "z"):
            assert states[f"{m}_{key}"].shape == (4, 32)
    assert all(v.shape[0] == 4 for v in states.values())
    out = model.fuse(states, batch["presence"])
    assert out["score"].shape == (4,) and out["logits"].shape == (4, 3)
    assert out["score"].abs().max() <= 3.0
    assert set(out["losses"]) == {"recon", "kl", "contrastive", "aecf_entropy"}
    assert all(v.dim() == 0 for v in out["losses"].values())
    diag = out["diagnostics"]
    assert diag["fusion_weights"].shape == (4, 3) and diag["attention_entropy"].shape == (4,)
    assert diag["aecf_mask_rate"].dim() == 0 and diag["fused_std"].shape == (4,)
    model.eval()
    assert model(batch)["losses"] == {}


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_num_classes(num_classes: int) -> None:
    model = AttentionRobustV4(make_cfg(num_classes=num_classes), DIMS).eval()
    assert model(make_batch())["logits"].shape == (6, num_classes)


def test_registry_builds_the_model() -> None:
    model = create_model("attention_robust_v4", make_cfg(), DIMS)
    assert isinstance(model, AttentionRobustV4)


def test_registry_is_an_explicit_table() -> None:
    from modules.attention_robust import AttentionRobustV4 as Moved
    from modules.base import MultimodalModel
    from modules.registry import MODELS

    assert AttentionRobustV4 is Moved  # the entry script re-exports the class
    assert set(MODELS) == {"attention_robust_v4", "ef_lstm", "lf_dnn", "tfn"}
    assert all(issubclass(cls, MultimodalModel) for cls in MODELS.values())
    with pytest.raises(ValueError, match="unknown model 'nope'; available: attention_robust_v4, ef_lstm"):
        create_model("nope", make_cfg(), DIMS)
    with pytest.raises(TypeError):  # the protocol is abstract: encode and fuse must be defined
        MultimodalModel()


@pytest.mark.slow
def test_building_a_model_never_imports_the_entry_script() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys, modules.registry as r; r.create_model('tfn', __import__('training.config').config.Config(), "
            "{'text': 4, 'audio': 3, 'vision': 2}); print('attention_robust_v4' in sys.modules, "
            "'training.cli' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr


def test_encode_does_not_need_presence() -> None:
    model = AttentionRobustV4(make_cfg(), DIMS).eval()
    batch = make_batch()
    del batch["presence"]
    states = model.encode(batch)
    assert model.fuse(states, torch.ones(6, 3, dtype=torch.bool))["score"].shape == (6,)


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_missing_modality_never_leaks(encoder: str) -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(encoder=encoder), DIMS).eval()
    clean = make_batch(5, (9, 13, 6))
    for pattern in PATTERNS:
        presence = torch.tensor(pattern).expand(5, 3).clone()
        zeroed, garbage = dict(clean), dict(clean)
        for i, m in enumerate(MODALITIES):
            if not pattern[i]:
                zeroed[m] = torch.zeros_like(clean[m])
                garbage[m] = torch.randn_like(clean[m]) * 100
        a = model(zeroed, presence)
        b = model(garbage, presence)
        assert torch.equal(a["score"], b["score"]), pattern
        assert torch.equal(a["logits"], b["logits"]), pattern
        for key, value in a["diagnostics"].items():
            assert torch.equal(value, b["diagnostics"][key]), (pattern, key)
        w = a["diagnostics"]["fusion_weights"]
        assert (w[:, ~torch.tensor(pattern)] == 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(5))


def test_mixed_presence_batch_matches_single_rows() -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(), DIMS).eval()
    batch = make_batch(7)
    presence = torch.tensor(PATTERNS)
    states = model.encode(batch)
    out = model.fuse(states, presence)
    for i in range(7):
        row = {k: v[i:i + 1] for k, v in states.items()}
        torch.testing.assert_close(model.fuse(row, presence[i:i + 1])["score"], out["score"][i:i + 1])


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_one_fuse_under_several_presence_blocks_equals_one_fuse_per_block(encoder: str) -> None:
    # the evaluator's pattern passes: presence (G * B, 3) against states of B rows; the keys and
    # values are shared by the G blocks, everything else is per row
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(encoder=encoder), DIMS).eval()
    B = 6
    states = model.encode(make_batch(B, lengths=(9, 14, 5)))
    g = torch.Generator().manual_seed(3)
    blocks = [torch.tensor(p).repeat(B, 1) for p in PATTERNS] + [torch.rand(B, 3, generator=g) > 0.5]
    blocks[-1][:, 0] = True  # a mixed block; every row keeps a modality
    with torch.no_grad():
        joint = model.fuse(states, torch.cat(blocks))
        for j, presence in enumerate(blocks):
            one = model.fuse(states, presence)
            rows = slice(j * B, (j + 1) * B)
            for key in ("score", "logits"):
                torch.testing.assert_close(joint[key][rows], one[key], rtol=0, atol=1e-5)
            for key in ("fusion_weights", "proxy_attention_mass"):
                torch.testing.assert_close(joint["diagnostics"][key][rows], one["diagnostics"][key], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="whole number of blocks"):
        model.fuse(states, torch.ones(B + 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="in eval mode"):
        model.train().fuse(states, torch.ones(2 * B, 3, dtype=torch.bool))


def test_states_concatenate_across_batches() -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(encoder="lstm"), DIMS).eval()
    a, b = make_batch(3, seed=1), make_batch(4, seed=2)
    sa, sb = model.encode(a), model.encode(b)
    states = {k: torch.cat([sa[k], sb[k]]) for k in sa}
    presence = torch.tensor(PATTERNS)
    joint = model.fuse(states, presence)["score"]
    as_float = {k: v.float() for k, v in states.items()}  # how the evaluator stores states
    assert torch.equal(model.fuse(as_float, presence)["score"], joint)
    torch.testing.assert_close(joint[:3], model.fuse(sa, presence[:3])["score"])
    torch.testing.assert_close(joint[3:], model.fuse(sb, presence[3:])["score"])


def test_all_missing_sample_raises() -> None:
    model = AttentionRobustV4(make_cfg(), DIMS)
    presence = torch.ones(6, 3, dtype=torch.bool)
    presence[2] = False
    presence[4] = False
    with pytest.raises(ValueError, match=r"sample\(s\) 2, ?4 have no modality present"):
        model(make_batch(), presence)
    # the trainer checks its epoch's masks up front and steps within presence_checked: no per-step
    # check (a host sync on a GPU), the shape still checked, and the check back once it is left
    from modules.presence import presence_checked

    with presence_checked():
        with presence_checked():
            model(make_batch(), presence)
        model(make_batch(), presence)
        with pytest.raises(ValueError, match="presence must have shape"):
            model(make_batch(), presence[:, :2])
    with pytest.raises(ValueError, match="have no modality present"):
        model(make_batch(), presence)


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_gradients_reach_every_parameter(encoder: str) -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(encoder=encoder), DIMS).train()
    batch = make_batch(8)
    out = model(batch)
    loss = sum(loss_terms(model.cfg, out, batch["labels"]).values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # something beyond the head learns from every component
    for prefix in ("encoders.text", "fusion.gate", "proxy_attention", "pool.q_proj", "decoder", "contrastive"):
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(prefix)), prefix


@pytest.mark.parametrize("off", SWITCHES + ["all"])
def test_every_component_can_be_switched_off(off: str) -> None:
    torch.manual_seed(0)
    flags = dict.fromkeys(SWITCHES if off == "all" else [off], False)
    model = AttentionRobustV4(make_cfg(**flags), DIMS).train()
    batch = make_batch()
    batch["presence"][1, :2] = False
    out = model(batch)
    loss = sum(loss_terms(model.cfg, out, batch["labels"]).values())
    loss.backward()
    assert torch.isfinite(loss)
    expected = {"recon", "kl", "contrastive", "aecf_entropy"}
    if not flags.get("use_vae", True):
        expected -= {"recon", "kl"}
    if not flags.get("use_contrastive", True):
        expected -= {"contrastive"}
    if not flags.get("use_aecf", True):
        expected -= {"aecf_entropy"}
    assert set(out["losses"]) == expected
    model.eval()
    assert torch.isfinite(model(batch)["score"]).all()


def test_model_returns_unweighted_terms_and_the_trainer_weights_them() -> None:
    batch = make_batch()
    outs = []
    for weights in ({}, {"vae_weight": 0.5, "kl_weight": 0.2, "contrastive_weight": 3.0, "entropy_weight": 0.7}):
        torch.manual_seed(0)
        model = AttentionRobustV4(make_cfg(dropout=0.0, **weights), DIMS).train()
        torch.manual_seed(1)
        outs.append((model.cfg, model(batch)))
    (_, plain), (cfg, out) = outs
    for name in ("recon", "kl", "contrastive", "aecf_entropy"):  # a weight never reaches the model
        assert torch.equal(plain["losses"][name], out["losses"][name]), name
    terms = loss_terms(cfg, out, batch["labels"], kl_scale=0.25)
    torch.testing.assert_close(terms["kl"], 0.2 * 0.25 * out["losses"]["kl"])
    torch.testing.assert_close(terms["recon"], 0.5 * out["losses"]["recon"])
    torch.testing.assert_close(terms["contrastive"], 3.0 * out["losses"]["contrastive"])
    torch.testing.assert_close(terms["aecf_entropy"], 0.7 * out["losses"]["aecf_entropy"])
    assert set(terms) == {"reg", "cls", "recon", "kl", "contrastive", "aecf_entropy"}
    with pytest.raises(KeyError, match="no weight"):
        loss_terms(cfg, {**out, "losses": {"unknown": out["losses"]["kl"]}}, batch["labels"])


def test_eval_is_deterministic_and_training_masks() -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(aecf_mask_prob=0.5), DIMS)
    batch = make_batch(32)
    model.eval()
    assert torch.equal(model(batch)["score"], model(batch)["score"])
    assert model(batch)["diagnostics"]["aecf_mask_rate"] == 0
    model.train()
    assert model(batch)["diagnostics"]["aecf_mask_rate"] > 0


@pytest.mark.slow
def test_overfits_small_data_set() -> None:
    torch.manual_seed(0)
    n, dims = 64, {"text": 8, "audio": 4, "vision": 6}
    batch = make_batch(n, (5, 5, 5), dims, seed=3)
    signal = batch["text"].sum(1)[:, 0] + batch["audio"].sum(1)[:, 1] - batch["vision"].sum(1)[:, 2]
    batch["labels"] = 2.5 * torch.tanh(signal / 2)
    cfg = make_cfg(dropout=0.0, hidden_dim=32, lr=3e-3)
    model = AttentionRobustV4(cfg, dims)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    mae = float("inf")
    for step in range(400):
        model.train()
        out = model(batch)
        loss = sum(loss_terms(cfg, out, batch["labels"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            model.eval()
            with torch.no_grad():
                mae = (model(batch)["score"] - batch["labels"]).abs().mean().item()
            if mae < 0.1:
                break
    assert mae < 0.1, f"train MAE {mae:.3f} after {step + 1} steps"


def test_unimodal_probes_learn_from_present_modalities_only() -> None:
    torch.manual_seed(0)
    model = AttentionRobustV4(make_cfg(unimodal_weight=0.5, dropout=0.0, variational=False), DIMS).train()
    batch = make_batch(6)
    batch["presence"][0] = torch.tensor([True, False, False])
    batch["presence"][1] = torch.tensor([False, True, True])
    out = model(batch)
    scores, presence = out["unimodal_scores"], out["presence"]
    assert scores.shape == (6, 3) and scores.abs().max() <= 3.0
    term = task_loss(model.cfg, out, batch["labels"])["unimodal"]
    err = (scores - batch["labels"][:, None]).abs()
    torch.testing.assert_close(term, 0.5 * err[presence].mean())
    term.backward(retain_graph=True)
    for i, m in enumerate(MODALITIES):
        assert model.unimodal_heads[i].weight.grad.abs().sum() > 0, m
    # the audio probe's gradient comes only from rows where audio is present: row 0 lacks it
    model.zero_grad()
    only_row0 = {k: v[:1] for k, v in out.items() if k in ("score", "logits", "unimodal_scores", "presence")}
    task_loss(model.cfg, {**out, **only_row0}, batch["labels"][:1])["unimodal"].backward()
    assert model.unimodal_heads[1].weight.grad is None or model.unimodal_heads[1].weight.grad.abs().sum() == 0
    model.eval()
    assert "unimodal_scores" not in model(batch)  # training only
