"""AttentionRobustV4: multimodal sentiment analysis robust to missing modalities.

Wiring (``H = cfg.hidden_dim``, modalities T/A/V)::

    text/audio/vision (B, L_m, D_m) --variational encoder per modality--> mu, logvar, std, z (B, H),
                                                                           tokens (B, L_m, H)
    [presence enters here; missing modalities are zeroed and masked everywhere below]
    (gated) uncertainty fusion of z (B, 3, H)        -> proxy p (B, H), fusion weights (B, 3)
    proxy cross-modal attention over all tokens      -> refined p (B, H)
    AECF pool: (fusion query + p) attends over z_m   -> pooled (B, H)   (curriculum masking in training)
    head on [pooled, p]                              -> score (B,) in [-3, 3], logits (B, C)

Training-only auxiliary losses, returned unweighted (the trainer applies ``vae_weight``,
``kl_weight`` with its warm-up, ``contrastive_weight`` and ``entropy_weight``): ``recon`` and ``kl``
(VAE over present modalities), ``contrastive`` (cross-modal InfoNCE) and ``aecf_entropy``; with
``unimodal_weight > 0`` a linear probe per modality on its mean gives ``unimodal_scores`` (B, 3)
that the task loss supervises. Every component can be switched off by its config flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from modules.aecf import CurriculumMasking, MultimodalAttentionPool
from modules.base import MultimodalModel
from modules.decoder import ModalityDecoder
from modules.encoders import build_encoder, encode_modalities
from modules.fusion import GatedUncertaintyFusion, UncertaintyWeightedFusion, inverse_variance_std
from modules.heads import SentimentHead
from modules.losses import ModalityContrastiveLoss, kl_loss, reconstruction_loss
from modules.pooling import masked_mean
from modules.presence import MODALITIES, check_presence
from modules.proxy_attention import ProxyCrossModalAttention

if TYPE_CHECKING:
    from training.config import Config

class AttentionRobustV4(MultimodalModel):
    """The full model; see the module docstring for the wiring.

    ``encode(batch) -> states``: per modality ``m`` the keys ``{m}_mu, {m}_logvar, {m}_std,
    {m}_z`` (B, H), ``{m}_token_mask`` (B, L_m) bool, with proxy attention ``{m}_keys`` and
    ``{m}_values`` (B, H, L_m) (the attention's projections of the per-step states, channels-major)
    and, in training with the VAE, ``{m}_pooled_input`` (B, D_m) (masked mean of the input, the
    reconstruction target; only a training-mode ``fuse`` reads it). It never reads presence.

    ``fuse(states, presence (B, 3) bool) -> out`` with ``score`` (B,), ``logits`` (B, C),
    ``losses`` (unweighted scalars, training mode only, else empty) and ``diagnostics``:
    ``fusion_weights`` (B, 3), ``aecf_weights`` (B, 3) (pool attention after masking),
    ``attention_entropy`` (B,) (normalised entropy of the pool attention over present
    modalities), ``aecf_mask_rate`` (scalar), ``fused_std`` (B,) (inverse-variance combined std
    of the present modalities) and, with proxy attention, ``proxy_attention_mass`` (B, 3). In
    training with ``unimodal_weight > 0`` also ``unimodal_scores`` (B, 3) in [-3, 3] (each
    modality's own prediction from its mean) and the ``presence`` (B, 3) they count under.
    A missing modality's states are replaced by zeros and masked out of every weighting, so the
    output does not depend on its features at all. ``{m}_token_mask`` may come back as a float
    tensor (states stored with ``.float()``); nonzero means valid. When ``presence`` is on the host,
    a modality that no row has is left out of the proxy attention (its keys would all be masked):
    the same output up to rounding, without the work (the evaluator's pattern passes). In eval
    mode ``presence`` may also hold ``G * B`` rows for states of ``B`` (``fuses_groups``): every
    output then has ``G * B`` rows, row ``g * B + b`` being sample ``b`` under presence row
    ``g * B + b``, equal to G separate calls up to rounding; the proxy attention reads the shared
    keys and values once for all G (the evaluator's grouped pattern passes).

    ``stack_recurrences`` (``cfg.stack_lstm``): with LSTM encoders, run LSTM directions of equal
    length as block-diagonal LSTMs of at most 128 units (``modules.encoders.encode_modalities``;
    fewer sequential runs, more arithmetic: ``modules.stacked_lstm``).
    """

    fuses_groups = True

    def __init__(self, cfg: Config, dims: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.stack_recurrences = cfg.stack_lstm
        H = cfg.hidden_dim
        M = len(MODALITIES)
        self.encoders = nn.ModuleDict({
            m: build_encoder(cfg.encoder, dims[m], H, cfg.dropout, cfg.bidirectional, cfg.variational)
            for m in MODALITIES
        })
        if cfg.use_gated_fusion:
            self.fusion = GatedUncertaintyFusion(H, M, cfg.gate_alpha, cfg.fusion_temperature, cfg.dropout)
        else:
            self.fusion = UncertaintyWeightedFusion(cfg.fusion_temperature)
        self.proxy_attention = (ProxyCrossModalAttention(H, cfg.num_heads, M, cfg.dropout)
                                if cfg.use_proxy_attention else None)
        masking = (CurriculumMasking(cfg.aecf_mask_prob, cfg.aecf_entropy_target, cfg.aecf_min_active)
                   if cfg.use_aecf else None)
        self.fusion_query = nn.Parameter(torch.randn(1, 1, H) * 0.02)
        self.modality_embed = nn.Parameter(torch.randn(M, H) * 0.02)
        self.pool = MultimodalAttentionPool(H, cfg.num_heads, curriculum_masking=masking)
        self.head = SentimentHead(2 * H, H, cfg.num_classes, cfg.dropout)
        self.decoder = ModalityDecoder(H, {m: dims[m] for m in MODALITIES}) if cfg.use_vae else None
        self.contrastive = (ModalityContrastiveLoss(H, M, min(64, H), cfg.contrastive_temperature)
                            if cfg.use_contrastive else None)
        self.unimodal_heads = (nn.ModuleList(nn.Linear(H, 1) for _ in MODALITIES)
                               if cfg.unimodal_weight > 0 else None)

    def encode(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        encoded = encode_modalities(self.encoders, batch, batch["lengths"], self.stack_recurrences)
        states: dict[str, Tensor] = {}
        for i, m in enumerate(MODALITIES):
            x, enc = batch[m], encoded[m]
            for key in ("mu", "logvar", "std", "z", "token_mask"):
                states[f"{m}_{key}"] = enc[key]
            if self.proxy_attention is not None:  # projected once here, reused under every mask
                states[f"{m}_keys"], states[f"{m}_values"] = self.proxy_attention.project(i, enc["tokens"])
            if self.training and self.decoder is not None:
                states[f"{m}_pooled_input"] = masked_mean(x, enc["token_mask"])
        return states

    def fuse(self, states: dict[str, Tensor], presence: Tensor) -> dict[str, Any]:
        # a presence given on the host (the evaluator's) says for free which modalities no row has:
        # those are left out of the proxy attention, whose keys for them would all be masked
        used = ([True] * len(MODALITIES) if presence.device.type != "cpu" or torch.compiler.is_compiling()
                else presence.bool().any(dim=0).tolist())
        presence = presence.to(states["text_mu"].device, non_blocking=True).bool()  # no wait on the stream
        check_presence(presence)
        B = presence.shape[0]
        G = B // states["text_mu"].shape[0]  # presence patterns the states are fused under at once
        if G * states["text_mu"].shape[0] != B or (G > 1 and self.training):
            raise ValueError(f"presence has {B} rows for states of {states['text_mu'].shape[0]}: give one row per "
                             "state, or (in eval mode) a whole number of blocks of them")
        keep = presence.unsqueeze(-1)  # (B, 3, 1)

        def tiled(x: Tensor) -> Tensor:  # a state's rows once per block of presence rows
            return x.repeat(G, *[1] * (x.dim() - 1)) if G > 1 else x

        def stacked(key: str, fill: float) -> Tensor:
            x = tiled(torch.stack([states[f"{m}_{key}"] for m in MODALITIES], dim=1))
            return torch.where(keep, x, torch.full_like(x, fill))

        mu, z, logvar, std = stacked("mu", 0.0), stacked("z", 0.0), stacked("logvar", 0.0), stacked("std", 1.0)
        proxy, weights = self.fusion(z, mu, std, presence)
        diagnostics: dict[str, Tensor] = {}

        if self.proxy_attention is not None:
            # a missing modality's keys are masked and its contribution zeroed inside the attention
            keys, values, masks = zip(*[
                (states[f"{m}_keys"], states[f"{m}_values"],  # shared by the G blocks: never tiled
                 tiled(states[f"{m}_token_mask"].bool()) & presence[:, i, None])
                if used[i] else (None, None, None) for i, m in enumerate(MODALITIES)])
            proxy, mass = self.proxy_attention(proxy, list(keys), list(values), list(masks))
            diagnostics["proxy_attention_mass"] = mass.detach()

        query = self.fusion_query.expand(B, -1, -1) + proxy.unsqueeze(1)
        pooled, info = self.pool(query, z + self.modality_embed, z, key_padding_mask=~presence, return_info=True,
                                 check_mask=False)  # check_presence did it
        score, logits = self.head(torch.cat([pooled.squeeze(1), proxy], dim=-1))

        entropy = info["entropy"].squeeze(1)
        diagnostics.update({
            "fusion_weights": weights.detach(),
            "aecf_weights": info["masked_attention_weights"].squeeze(1).detach(),
            "attention_entropy": entropy.detach(),
            "aecf_mask_rate": info["mask_rate"].mean().detach(),
            "fused_std": inverse_variance_std(std, presence).detach(),
        })

        losses: dict[str, Tensor] = {}
        if self.training:
            if self.decoder is not None:
                recon = self.decoder({m: z[:, i] for i, m in enumerate(MODALITIES)})
                target = [torch.where(keep[:, i], states[f"{m}_pooled_input"],
                                      torch.zeros_like(states[f"{m}_pooled_input"]))
                          for i, m in enumerate(MODALITIES)]
                losses["recon"] = reconstruction_loss([recon[m] for m in MODALITIES], target, presence)
                losses["kl"] = kl_loss(mu, logvar, presence)
            if self.contrastive is not None:
                losses["contrastive"] = self.contrastive(mu, presence)
            if self.pool.curriculum_masking is not None:
                losses["aecf_entropy"] = self.pool.curriculum_masking.entropy_loss(entropy)

        out = {"score": score, "logits": logits, "losses": losses, "diagnostics": diagnostics}
        if self.training and self.unimodal_heads is not None:
            out["unimodal_scores"] = 3.0 * torch.tanh(torch.cat(
                [head(mu[:, i]) for i, head in enumerate(self.unimodal_heads)], dim=-1))
            out["presence"] = presence
        return out
