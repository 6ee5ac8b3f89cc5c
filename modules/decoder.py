"""Per-modality decoders: the VAE half that reconstructs each modality's pooled input."""

from __future__ import annotations

from torch import Tensor, nn


class ModalityDecoder(nn.Module):
    """Reconstruct the pooled input features of each modality from its latent ``z``.

    One small MLP per modality, ``Linear(H, H) - GELU - Linear(H, D_m)``.

    forward(z: dict name -> (B, H)) -> dict name -> (B, D_m) for every name given. Which
    reconstructions count (only the present modalities) is decided by the loss
    (:func:`modules.losses.reconstruction_loss`), not here.
    """

    def __init__(self, hidden_dim: int, dims: dict[str, int]):
        super().__init__()
        self.decoders = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
            for name, dim in dims.items()
        })

    def forward(self, z: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.decoders[name](value) for name, value in z.items()}
