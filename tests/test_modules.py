"""Building blocks: encoders, fusion, proxy attention, AECF gate, losses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from datasets.classes import class_centres, positive_probability
from modules.aecf import (
    CurriculumMasking,
    MultimodalAttentionPool,
    create_fusion_pool,
    multimodal_attention_pool,
    normalized_entropy,
)
from modules.decoder import ModalityDecoder
from modules.encoders import VariationalLSTMEncoder, VariationalMLPEncoder, build_encoder
from modules.fusion import GatedUncertaintyFusion, UncertaintyWeightedFusion, inverse_variance_std
from modules.losses import (
    FocalLabelSmoothingLoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    ModalityContrastiveLoss,
    distillation_loss,
    gaussian_kl,
    kl_loss,
    kl_warmup,
    labels_to_classes,
    reconstruction_loss,
    symmetric_info_nce,
    task_loss,
)
from modules.pooling import length_mask
from modules.proxy_attention import ProxyCrossModalAttention
from tests.helpers import need_cpu_compile

H = 16


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- encoders ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
@pytest.mark.parametrize("length", [1, 7, 50])
def test_encoder_shapes(kind: str, length: int) -> None:
    torch.manual_seed(0)
    enc = build_encoder(kind, 5, H, dropout=0.1, bidirectional=True, variational=True)
    x = torch.randn(4, length, 5)
    lengths = torch.tensor([length, 1, max(1, length // 2), length])
    out = enc(x, lengths)
    assert out["tokens"].shape == (4, length, H)
    assert out["token_mask"].shape == (4, length)
    for key in ("mu", "logvar", "std", "z", "pooled"):
        assert out[key].shape == (4, H)
    assert torch.equal(out["token_mask"].sum(1), lengths)
    assert (out["tokens"][~out["token_mask"]] == 0).all()


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_encoder_ignores_padding(kind: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(kind, 5, H, dropout=0.0, bidirectional=True, variational=True).eval()
    lengths = torch.tensor([3, 1, 6])
    x = torch.randn(3, 6, 5)
    padded_garbage = x.clone()
    padded_garbage[~length_mask(lengths, 6)] = 100 * torch.randn(int((~length_mask(lengths, 6)).sum()), 5)
    a, b = enc(x, lengths), enc(padded_garbage, lengths)
    for key in ("mu", "logvar", "tokens"):
        torch.testing.assert_close(a[key], b[key])


def test_lstm_length_one_matches_unpadded() -> None:
    torch.manual_seed(0)
    enc = VariationalLSTMEncoder(5, H, bidirectional=True).eval()
    x = torch.randn(2, 4, 5)
    full = enc(x, torch.tensor([1, 4]))
    alone = enc(x[:1, :1], torch.tensor([1]))
    torch.testing.assert_close(full["mu"][:1], alone["mu"])
    torch.testing.assert_close(full["tokens"][:1, :1], alone["tokens"])


def test_lstm_matches_packed_sequences() -> None:
    """The padded run gives what ``nn.LSTM`` over packed sequences gives: tokens and final states."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    enc = VariationalLSTMEncoder(5, H, bidirectional=True).eval()
    x, lengths = torch.randn(4, 9, 5), torch.tensor([9, 1, 4, 7])
    out = enc(x, lengths)
    packed, (h_n, _) = enc.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    steps, _ = pad_packed_sequence(packed, batch_first=True, total_length=9)
    mask = length_mask(lengths, 9).unsqueeze(-1)
    torch.testing.assert_close(out["tokens"], enc.proj(steps) * mask)
    torch.testing.assert_close(out["pooled"], enc.norm(enc.proj(torch.cat([h_n[0], h_n[1]], dim=-1))))


def test_lstm_odd_hidden_unidirectional() -> None:
    enc = VariationalLSTMEncoder(3, 7, bidirectional=True)
    assert enc(torch.randn(2, 5, 3), torch.tensor([5, 2]))["mu"].shape == (2, 7)
    enc = VariationalLSTMEncoder(3, 8, bidirectional=False)
    assert enc(torch.randn(2, 5, 3), torch.tensor([5, 2]))["tokens"].shape == (2, 5, 8)


def test_variational_sampling_only_in_training() -> None:
    torch.manual_seed(0)
    enc = VariationalMLPEncoder(5, H, variational=True)
    x, lengths = torch.randn(4, 6, 5), torch.full((4,), 6)
    out = enc(x, lengths)
    assert torch.allclose(out["std"], torch.ones_like(out["std"]))  # zero-initialised logvar
    assert not torch.equal(out["z"], out["mu"])
    enc.eval()
    out = enc(x, lengths)
    assert torch.equal(out["z"], out["mu"])
    off = VariationalMLPEncoder(5, H, variational=False)
    out = off(x, lengths)
    assert torch.equal(out["z"], out["mu"])


def test_logvar_is_clamped() -> None:
    enc = VariationalMLPEncoder(5, H)
    with torch.no_grad():
        enc.head.logvar.bias.fill_(50.0)
    out = enc(torch.randn(2, 3, 5), torch.tensor([3, 2]))
    assert out["logvar"].max() == 10.0


def test_decoder_shapes() -> None:
    dec = ModalityDecoder(H, {"text": 7, "audio": 3})
    out = dec({"text": torch.randn(4, H), "audio": torch.randn(4, H)})
    assert out["text"].shape == (4, 7) and out["audio"].shape == (4, 3)


# ---- fusion ----------------------------------------------------------------------------------

PATTERNS = [torch.tensor(p, dtype=torch.bool) for p in
            [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]]


@pytest.mark.parametrize("fusion_cls", ["plain", "gated"])
def test_fusion_weights_zero_for_missing_and_sum_to_one(fusion_cls: str) -> None:
    torch.manual_seed(0)
    fusion = UncertaintyWeightedFusion(0.5) if fusion_cls == "plain" else GatedUncertaintyFusion(H, alpha=0.3)
    presence = torch.stack(PATTERNS * 3)
    B = presence.shape[0]
    z, mu = torch.randn(B, 3, H), torch.randn(B, 3, H)
    std = torch.rand(B, 3, H) + 0.1
    proxy, w = fusion(z, mu, std, presence)
    assert proxy.shape == (B, H) and w.shape == (B, 3)
    assert (w[~presence] == 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(B))
    # garbage in a missing modality's z, mu and std changes nothing
    z2, mu2, std2 = z.clone(), mu.clone(), std.clone()
    z2[~presence], mu2[~presence] = 1e3, -1e3
    std2[~presence] = 1e-3
    proxy2, w2 = fusion(z2, mu2, std2, presence)
    assert torch.equal(proxy, proxy2) and torch.equal(w, w2)


def test_uncertainty_weights_favour_confident_modality() -> None:
    std = torch.ones(1, 3, H)
    std[0, 1] = 0.25
    _, w = UncertaintyWeightedFusion()(torch.randn(1, 3, H), torch.randn(1, 3, H), std,
                                       torch.ones(1, 3, dtype=torch.bool))
    assert w.argmax() == 1
    expected = torch.softmax(torch.tensor([1.0, 4.0, 1.0]), 0)
    torch.testing.assert_close(w[0], expected)


def test_inverse_variance_std() -> None:
    std = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]])
    presence = torch.tensor([[True, True, False]])
    expected = 1.0 / math.sqrt(1.0 + 0.25)
    torch.testing.assert_close(inverse_variance_std(std, presence), torch.tensor([expected]))


# ---- proxy attention -------------------------------------------------------------------------


def test_proxy_attention_masks_missing_and_padding() -> None:
    torch.manual_seed(0)
    attn = ProxyCrossModalAttention(H, num_heads=4).eval()
    B = 3
    tokens = [torch.randn(B, 5, H), torch.randn(B, 9, H), torch.randn(B, 2, H)]
    masks = [torch.ones(B, 5, dtype=torch.bool), torch.zeros(B, 9, dtype=torch.bool),
             torch.ones(B, 2, dtype=torch.bool)]
    masks[0][:, 3:] = False
    proxy = torch.randn(B, H)

    def run(toks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        kv = [attn.project(m, t) for m, t in enumerate(toks)]
        return attn(proxy, [k for k, _ in kv], [v for _, v in kv], masks)

    out, mass = run(tokens)
    assert out.shape == (B, H) and mass.shape == (B, 3)
    assert (mass[:, 1] == 0).all()
    torch.testing.assert_close(mass.sum(1), torch.ones(B))
    garbage = [tokens[0].clone(), torch.randn(B, 9, H) * 50, tokens[2]]
    garbage[0][:, 3:] = 77.0
    out2, mass2 = run(garbage)
    assert torch.equal(out, out2) and torch.equal(mass, mass2)


def test_proxy_attention_equals_multi_head_scaled_dot_product_attention() -> None:
    """The refined proxy and the mass against torch's attention over the concatenated tokens."""
    torch.manual_seed(0)
    nh = 4
    attn = ProxyCrossModalAttention(H, num_heads=nh).eval()
    B, lengths = 5, (6, 11, 3)
    tokens = [torch.randn(B, L, H) for L in lengths]
    masks = [torch.rand(B, L) > 0.4 for L in lengths]
    masks[0][:, 0] = True
    proxy = torch.randn(B, H)
    kv = [attn.project(m, t) for m, t in enumerate(tokens)]
    out, mass = attn(proxy, [k for k, _ in kv], [v for _, v in kv], masks)

    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, nh, L, H / nh)
        return x.view(B, x.shape[1], nh, H // nh).transpose(1, 2)

    k = torch.cat([attn.k_proj(t + attn.type_embed[m]) for m, t in enumerate(tokens)], dim=1)
    v = torch.cat([attn.v_proj(t) for t in tokens], dim=1)
    valid = torch.cat(masks, dim=1)[:, None, None, :]  # (B, 1, 1, L), True = attend
    q = heads(attn.q_proj(proxy)[:, None])
    ctx = F.scaled_dot_product_attention(q, heads(k), heads(v), attn_mask=valid)  # (B, nh, 1, H / nh)
    p = attn.norm1(proxy + attn.out_proj(ctx.transpose(1, 2).reshape(B, H)))
    torch.testing.assert_close(out, attn.norm2(p + attn.ffn(p)), rtol=0, atol=1e-5)
    weights = torch.softmax((q @ heads(k).transpose(-1, -2) / (H // nh) ** 0.5).masked_fill(~valid, float("-inf")), -1)
    per_step = weights.mean(1).squeeze(1)  # (B, L) head-averaged
    expected = torch.stack([c.sum(-1) for c in per_step.split(lengths, dim=-1)], dim=-1)
    torch.testing.assert_close(mass, expected, rtol=0, atol=1e-6)


def test_proxy_attention_skips_a_modality_given_as_none_as_if_all_its_keys_were_masked() -> None:
    torch.manual_seed(0)
    attn = ProxyCrossModalAttention(H, num_heads=4).eval()
    B = 4
    kv = [attn.project(m, torch.randn(B, L, H)) for m, L in enumerate((5, 9, 3))]
    masks = [torch.rand(B, L) > 0.3 for L in (5, 9, 3)]
    masks[0][:, 0] = True  # every row keeps a valid key
    proxy = torch.randn(B, H, requires_grad=True)
    masked = [masks[0], torch.zeros_like(masks[1]), masks[2]]  # audio missing from every row
    out, mass = attn(proxy, [k for k, _ in kv], [v for _, v in kv], masked)
    skip, skip_mass = attn(proxy, [kv[0][0], None, kv[2][0]], [kv[0][1], None, kv[2][1]], [masks[0], None, masks[2]])
    torch.testing.assert_close(skip, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(skip_mass, mass, rtol=0, atol=1e-6)
    assert (skip_mass[:, 1] == 0).all()
    grad, = torch.autograd.grad(skip.sum(), proxy)
    torch.testing.assert_close(grad, torch.autograd.grad(out.sum(), proxy)[0], rtol=0, atol=1e-5)


# ---- AECF --------------------------------------------------------------------------------


def test_curriculum_keeps_min_active_on_random_cases() -> None:
    torch.manual_seed(0)
    n = 10_000
    for min_active in (1, 2, 3):
        masking = CurriculumMasking(base_mask_prob=0.9, entropy_target=0.9, min_active=min_active).train()
        weights = torch.softmax(torch.randn(n, 3) * 4, dim=-1)
        valid = torch.rand(n, 3) > 0.4
        valid[~valid.any(1), 0] = True
        masked, info = masking(weights, valid)
        kept = info["keep_mask"]
        assert not (kept & ~valid).any()
        need = valid.sum(1).clamp_max(min_active)
        assert (kept.sum(1) >= need).all()
        assert (masked[~kept] == 0).all()
        torch.testing.assert_close(masked.sum(1), torch.ones(n))
        assert torch.isfinite(masked).all()


def test_curriculum_masks_more_when_entropy_is_low() -> None:
    torch.manual_seed(0)
    masking = CurriculumMasking(base_mask_prob=0.3, entropy_target=0.7, min_active=1).train()
    n = 20_000
    peaked = torch.tensor([0.98, 0.01, 0.01]).expand(n, 3)
    flat = torch.full((n, 3), 1 / 3)
    _, info_peaked = masking(peaked)
    _, info_flat = masking(flat)
    assert info_peaked["entropy"].mean() < 0.2 and info_flat["entropy"].mean() > 0.99
    assert info_peaked["mask_rate"].mean() > 1.4 * info_flat["mask_rate"].mean()
    torch.testing.assert_close(masking.mask_probability(torch.tensor([1.0, 0.0])), torch.tensor([0.3, 0.6]))


def test_curriculum_is_identity_in_eval() -> None:
    masking = CurriculumMasking(base_mask_prob=1.0).eval()
    weights = torch.softmax(torch.randn(50, 3), -1)
    out, info = masking(weights)
    assert out is weights
    assert (info["mask_rate"] == 0).all()


def test_curriculum_deterministic_under_seed() -> None:
    masking = CurriculumMasking(base_mask_prob=0.5).train()
    weights = torch.softmax(torch.randn(100, 3), -1)
    torch.manual_seed(3)
    a, _ = masking(weights)
    torch.manual_seed(3)
    b, _ = masking(weights)
    assert torch.equal(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_no_nan_on_one_hot_and_uniform(training: bool) -> None:
    masking = CurriculumMasking().train(training)
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]],
                           requires_grad=True)
    torch.manual_seed(0)
    out, info = masking(weights)
    assert torch.isfinite(out).all() and torch.isfinite(info["entropy"]).all()
    torch.testing.assert_close(info["entropy"][:3], torch.tensor([0.0, 0.0, 1.0]))
    (out.sum() + masking.entropy_loss(info["entropy"])).backward()
    assert torch.isfinite(weights.grad).all()


def test_normalized_entropy_over_present_only() -> None:
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    ent = normalized_entropy(weights, valid)
    expected_mid = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)) / math.log(3)
    torch.testing.assert_close(ent, torch.tensor([1.0, expected_mid, 1.0]))


def test_entropy_loss_is_shortfall_below_target() -> None:
    masking = CurriculumMasking(entropy_target=0.7)
    loss = masking.entropy_loss(torch.tensor([0.2, 0.9]))
    torch.testing.assert_close(loss, torch.tensor(0.5 ** 2 / 2))


def test_fusion_pool_readme_usage_and_padding() -> None:
    torch.manual_seed(0)
    fusion_query, pool = create_fusion_pool(embed_dim=32, num_modalities=3, mask_prob=0.15, num_heads=4)
    assert fusion_query.shape == (1, 1, 32)
    modalities = torch.randn(8, 3, 32)
    query = fusion_query.expand(8, -1, -1)
    assert pool(query, modalities).shape == (8, 1, 32)
    pool.eval()
    kpm = torch.zeros(8, 3, dtype=torch.bool)
    kpm[:, 1] = True
    out, info = pool(query, modalities, key_padding_mask=kpm, return_info=True)
    assert (info["attention_weights"][..., 1] == 0).all()
    garbage = modalities.clone()
    garbage[:, 1] = 1e4
    assert torch.equal(out, pool(query, garbage, key_padding_mask=kpm))
    loss = pool.curriculum_masking.entropy_loss(info["entropy"])
    assert loss.dim() == 0
    with pytest.raises(ValueError, match="mask every key"):
        pool(query, modalities, key_padding_mask=torch.ones(8, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"row\(s\) 2 of key_padding_mask mask every key"):
        multimodal_attention_pool(query, modalities, key_padding_mask=kpm | (torch.arange(8) == 2)[:, None])


def test_pool_uses_the_masked_weights() -> None:
    torch.manual_seed(0)
    masking = CurriculumMasking(base_mask_prob=0.6, entropy_target=1.0, min_active=1)
    pool = MultimodalAttentionPool(8, num_heads=1, curriculum_masking=masking).train()
    query, key = torch.randn(64, 1, 8), torch.randn(64, 3, 8)
    out, info = pool(query, key, return_info=True)
    kept = info["keep_mask"]
    assert (~kept).any()
    w = info["masked_attention_weights"]
    assert (w[~kept] == 0).all()
    expected = pool.out_proj(w @ pool.v_proj(key))
    torch.testing.assert_close(out, expected)


def test_pool_batch_first_false() -> None:
    torch.manual_seed(0)
    pool = MultimodalAttentionPool(8, num_heads=2, batch_first=False).eval()
    q, k = torch.randn(1, 5, 8), torch.randn(3, 5, 8)
    out = pool(q, k)
    pool.batch_first = True
    torch.testing.assert_close(out, pool(q.transpose(0, 1), k.transpose(0, 1)).transpose(0, 1))


def test_checkpointing_gives_same_outputs_and_grads() -> None:
    torch.manual_seed(0)
    fusion_query, pool = create_fusion_pool(16, 3, mask_prob=0.5, num_heads=2, dropout=0.1)
    pool.train()
    key = torch.randn(32, 3, 16, requires_grad=True)
    kpm = torch.rand(32, 3) > 0.7
    kpm[kpm.all(1), 0] = False

    def run(use_checkpoint: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pool.zero_grad()
        key.grad = None
        torch.manual_seed(7)
        out, info = pool(fusion_query.expand(32, -1, -1), key, key_padding_mask=kpm, return_info=True,
                         use_checkpoint=use_checkpoint)
        (out.square().sum() + pool.curriculum_masking.entropy_loss(info["entropy"])).backward()
        return out.detach(), [key.grad.clone()] + [p.grad.clone() for p in pool.parameters()]

    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_functional_pool() -> None:
    torch.manual_seed(0)
    query, mods = torch.randn(4, 1, 8), torch.randn(4, 3, 8)
    out = multimodal_attention_pool(query, mods)
    weights = torch.softmax(query @ mods.transpose(1, 2) / math.sqrt(8), -1)
    torch.testing.assert_close(out, weights @ mods)
    kpm = torch.tensor([[False, True, False]]).expand(4, 3)
    garbage = mods.clone()
    garbage[:, 1] = 99.0
    assert torch.equal(multimodal_attention_pool(query, mods, key_padding_mask=kpm),
                       multimodal_attention_pool(query, garbage, key_padding_mask=kpm))
    masking = CurriculumMasking(base_mask_prob=0.5)
    out = multimodal_attention_pool(query, mods, curriculum_masking=masking, training=True)
    assert out.shape == (4, 1, 8) and torch.isfinite(out).all()


# ---- losses ---------------------------------------------------------------------------------


def test_labels_to_classes() -> None:
    labels = torch.tensor([-3.0, -1.4, -0.2, 0.0, 0.3, 1.5, 2.5, 3.0])
    assert labels_to_classes(labels, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert labels_to_classes(labels, 3).tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert labels_to_classes(labels, 7).tolist() == [0, 2, 3, 3, 3, 5, 5, 6]
    with pytest.raises(ValueError):
        labels_to_classes(labels, 5)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_class_layout_is_one_layout(num_classes) -> None:
    # the loss's classes, the reported expected value and P(positive) read the same layout
    centres = class_centres(num_classes)
    assert labels_to_classes(torch.from_numpy(centres), num_classes).tolist() == list(range(num_classes))
    onehot = np.eye(num_classes)
    assert np.array_equal(onehot @ centres, centres)
    signed = centres != 0
    assert np.array_equal(positive_probability(onehot[signed]), (centres[signed] > 0).astype(float))
    with pytest.raises(ValueError, match="num_classes must be 2, 3 or 7"):
        class_centres(5)


def test_focal_gamma_zero_equals_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(10, 3), torch.randint(0, 3, (10,))
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    torch.testing.assert_close(FocalLabelSmoothingLoss(0.0, 0.0)(logits, target), F.cross_entropy(logits, target))


def test_focal_by_hand() -> None:
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 1)
    expected = -((1 - p) ** 2) * math.log(p)
    torch.testing.assert_close(FocalLoss(gamma=2.0)(logits, target), torch.tensor(expected))


def test_label_smoothing_by_hand() -> None:
    logits, target = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1])
    logp = torch.log_softmax(logits, -1)[0].tolist()
    s = 0.3
    q = [s / 3, 1 - s + s / 3, s / 3]
    expected = -sum(qi * lp for qi, lp in zip(q, logp))
    torch.testing.assert_close(LabelSmoothingCrossEntropy(s)(logits, target), torch.tensor(expected))
    torch.testing.assert_close(LabelSmoothingCrossEntropy(s)(logits, target),
                               F.cross_entropy(logits, target, label_smoothing=s))


def test_focal_label_smoothing_by_hand() -> None:
    logits, target = torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    p = torch.softmax(logits, -1)[0].tolist()
    gamma, s = 2.0, 0.2
    q = [s / 2, 1 - s + s / 2]
    expected = -sum(qi * (1 - pi) ** gamma * math.log(pi) for qi, pi in zip(q, p))
    torch.testing.assert_close(FocalLabelSmoothingLoss(gamma, s)(logits, target), torch.tensor(expected))


def test_info_nce_two_by_two_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    t = 0.5
    sim = [[1.0, math.sqrt(0.5)], [0.0, math.sqrt(0.5)]]  # a_i . b_j
    row = [-math.log(math.exp(sim[i][i] / t) / sum(math.exp(sim[i][j] / t) for j in range(2))) for i in range(2)]
    col = [-math.log(math.exp(sim[j][j] / t) / sum(math.exp(sim[i][j] / t) for i in range(2))) for j in range(2)]
    expected = 0.5 * (sum(row) / 2 + sum(col) / 2)
    torch.testing.assert_close(symmetric_info_nce(a, b, t), torch.tensor(expected))


def test_contrastive_uses_only_pairs_with_both_present() -> None:
    torch.manual_seed(0)
    loss_fn = ModalityContrastiveLoss(H, 3, proj_dim=8, temperature=0.1)
    emb = torch.randn(4, 3, H)
    presence = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    proj = [head(emb[:, m]) for m, head in enumerate(loss_fn.heads)]
    expected = symmetric_info_nce(proj[0][:2], proj[1][:2], 0.1)  # only T-A has >= 2 rows
    torch.testing.assert_close(loss_fn(emb, presence), expected)
    garbage = emb.clone()
    garbage[~presence] = 1e3
    torch.testing.assert_close(loss_fn(garbage, presence), expected)
    none = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    assert loss_fn(emb, none) == 0


def test_info_nce_over_a_batch_of_pairs_equals_each_pair_alone() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    keep = torch.rand(3, 6) > 0.3
    batched, plain = symmetric_info_nce(a, b, 0.2, keep=keep), symmetric_info_nce(a, b, 0.2)
    assert batched.shape == plain.shape == (3,)
    for k in range(3):
        torch.testing.assert_close(batched[k], symmetric_info_nce(a[k], b[k], 0.2, keep=keep[k]))
        torch.testing.assert_close(plain[k], symmetric_info_nce(a[k], b[k], 0.2))


@pytest.mark.slow
def test_info_nce_compiled_on_the_cpu_matches_cross_entropy_on_the_kept_rows() -> None:
    # the reference selects the kept rows and uses F.cross_entropy; the loss itself masks them, and under
    # torch.compile must build: torch 2.11's inductor emitted C++ that did not compile for a
    # cross_entropy-with-arange form of it on AVX-512 CPUs, which broke every --compile on the CPU
    need_cpu_compile()
    torch.manual_seed(0)
    a, b = torch.randn(3, 16, 8, requires_grad=True), torch.randn(3, 16, 8)
    keep = torch.rand(3, 16) > 0.3
    compiled = torch.compile(lambda a, b, keep: symmetric_info_nce(a, b, 0.1, keep=keep), dynamic=False)
    loss = compiled(a, b, keep)
    (grad,) = torch.autograd.grad(loss.sum(), a)
    expected = []
    for k in range(3):
        x, y = F.normalize(a[k][keep[k]], dim=-1), F.normalize(b[k][keep[k]], dim=-1)
        logits, target = x @ y.T / 0.1, torch.arange(int(keep[k].sum()))
        expected.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    expected = torch.stack(expected)
    (expected_grad,) = torch.autograd.grad(expected.sum(), a)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert (grad[~keep] == 0).all()


def test_contrastive_is_the_mean_over_modality_pairs_of_their_info_nce() -> None:
    torch.manual_seed(0)
    loss_fn = ModalityContrastiveLoss(H, 3, proj_dim=8, temperature=0.1)
    emb = torch.randn(5, 3, H)
    presence = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    proj = [head(emb[:, m]) for m, head in enumerate(loss_fn.heads)]
    pairs = [(0, 1), (0, 2), (1, 2)]  # each with 3 rows that have both
    expected = sum(symmetric_info_nce(proj[i], proj[j], 0.1, keep=presence[:, i] & presence[:, j])
                   for i, j in pairs) / 3
    torch.testing.assert_close(loss_fn(emb, presence), expected)


def test_contrastive_masked_rows_match_selected_rows_and_get_no_gradient() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    keep = torch.tensor([True, False, True, True, False, True])
    expected = symmetric_info_nce(a[keep], b[keep], 0.2)
    poisoned = b.clone()
    poisoned[~keep] = float("nan")
    loss = symmetric_info_nce(a, poisoned, 0.2, keep=keep)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(a.grad).all() and (a.grad[~keep] == 0).all() and (a.grad[keep] != 0).any()
    assert symmetric_info_nce(a, b, 0.2, keep=torch.zeros(6, dtype=torch.bool)) == 0


def test_kl_by_hand() -> None:
    mu, sigma = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.5]])
    expected = sum(math.log(1 / s) + (s ** 2 + m ** 2) / 2 - 0.5 for m, s in zip([0.5, -1.0], [2.0, 0.5]))
    torch.testing.assert_close(gaussian_kl(mu, 2 * torch.log(sigma)), torch.tensor([expected]))
    mu3 = torch.stack([mu, torch.full_like(mu, 9.0)], dim=1)  # (1, 2, 2); second modality missing
    logvar3 = torch.stack([2 * torch.log(sigma), torch.zeros_like(mu)], dim=1)
    torch.testing.assert_close(kl_loss(mu3, logvar3, torch.tensor([[True, False]])), torch.tensor(expected))


def test_reconstruction_counts_present_only() -> None:
    recon = [torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[3.0], [0.0]])]
    target = [torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0], [100.0]])]
    presence = torch.tensor([[True, True], [True, False]])
    # present pairs: (0, 0): 1, (0, 1): 9, (1, 0): 2; (1, 1) is missing
    torch.testing.assert_close(reconstruction_loss(recon, target, presence), torch.tensor(12.0 / 3))


def test_kl_warmup() -> None:
    assert [kl_warmup(e, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_warmup(0, 0) == 1.0


def test_task_loss() -> None:
    labels = torch.tensor([-1.0, 2.0])
    out = {"score": torch.tensor([0.0, 1.0]), "logits": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    cfg = SimpleNamespace(reg_weight=2.0, cls_weight=0.5, reg_loss="l1", focal_gamma=0.0, label_smoothing=0.0)
    losses = task_loss(cfg, out, labels)
    torch.testing.assert_close(losses["reg"], torch.tensor(2.0 * 1.0))
    torch.testing.assert_close(losses["cls"], 0.5 * F.cross_entropy(out["logits"], torch.tensor([0, 1])))
    cfg.reg_loss, cfg.cls_weight = "mse", 0.0
    losses = task_loss(cfg, out, labels)
    assert set(losses) == {"reg"}
    torch.testing.assert_close(losses["reg"], torch.tensor(2.0 * 1.0))


def test_distillation_by_hand_and_only_the_student_learns() -> None:
    teacher = {"score": torch.tensor([1.0, -2.0, 0.5], requires_grad=True),
               "logits": torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], requires_grad=True)}
    student = {"score": torch.tensor([0.0, -2.0, 3.0], requires_grad=True),
               "logits": torch.tensor([[1.0, 0.0], [2.0, 0.0], [5.0, -5.0]], requires_grad=True)}
    select = torch.tensor([True, True, False])
    loss = distillation_loss(student, teacher, select)
    p_t = F.softmax(teacher["logits"][:2].detach(), dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(student["logits"][:2].detach(), dim=-1))).sum(dim=-1)
    torch.testing.assert_close(loss, (kl + torch.tensor([1.0, 0.0])).mean())
    loss.backward()
    assert teacher["score"].grad is None and teacher["logits"].grad is None
    assert student["logits"].grad[2].abs().sum() == 0 and student["score"].grad[2] == 0  # not selected
    assert student["logits"].grad[0].abs().sum() > 0
    same = distillation_loss(teacher, teacher, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(same, torch.tensor(0.0))
    student["logits"].grad = student["score"].grad = None
    none = distillation_loss(student, teacher, torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and student["logits"].grad.abs().sum() == 0 and student["score"].grad.abs().sum() == 0
    # a non-finite output in a row that does not count reaches neither the loss nor any gradient
    student["logits"].grad = student["score"].grad = None
    broken = {"score": teacher["score"].detach().clone(), "logits": teacher["logits"].detach().clone()}
    broken["score"][2], broken["logits"][2, 0] = float("nan"), float("inf")
    loss = distillation_loss(student, broken, select)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student["logits"].grad).all() and torch.isfinite(student["score"].grad).all()


def test_readme_aecf_example_runs():
    """The README's AECF drop-in example is runnable as written (its asserts check shapes and that a
    missing modality gets no weight and cannot change the output)."""
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## AECF drop-in API")[1].split("\n## ")[0]
    blocks = section.split("```python\n")[1:]
    assert len(blocks) == 1, "the README's AECF section should hold one python example"
    exec(compile(blocks[0].split("```")[0], "README.md (AECF example)", "exec"), {})
