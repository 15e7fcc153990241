"""A tiny wav2vec-style self-supervised setup shared by the Lightning and Hugging Face tests.

* :func:`write_probe`: seeded synthetic 16 kHz wavs and a fairseq ``.tsv`` manifest;
* :func:`tiny_config`: a 2-layer, 32-dim transformers ``Wav2Vec2Config`` with every source of
  randomness in training off (no dropout, layer drop or SpecAugment), so one process and two
  DDP processes train the same weights;
* :func:`waveforms`: seeded fixed-length training / validation waveforms;
* :class:`TinySSLModule` (built by :func:`lightning_module`): a ``LightningModule`` around a
  ``Wav2Vec2Model``. For its first :data:`SPREAD_STEPS` steps it decorrelates each clip's
  frames (a VICReg-like variance and covariance loss, which raises their rank), then it learns
  to predict the next frame's convolutional features from the transformer output (which
  collapses them): the rank of the last layer on the probe rises, then falls, so the best
  validation is neither the first nor the last. Both losses are means over clips, so a DDP
  run (gradients averaged over ranks) trains the same weights as one process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 16000
SPREAD_STEPS = 4
METRICS = "rankme,effective_rank,rankme_t,alpha_req,inertia,davies_bouldin,calinski_harabasz"


def write_probe(folder: Path, n_utts: int = 6, seed: int = 0) -> Path:
    """Write ``n_utts`` seeded synthetic wavs (0.5-1.25 s) and ``probe.tsv``; return its path."""
    rng = np.random.default_rng(seed)
    wav_dir = folder / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines = [str(wav_dir)]
    for i in range(n_utts):
        n = int(rng.integers(8000, 20000))
        t = np.arange(n) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (120 + 45 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        x = x + 0.05 * rng.standard_normal(n)
        sf.write(wav_dir / f"p{i}.wav", x.astype(np.float32), SAMPLE_RATE)
        lines.append(f"p{i}.wav\t{n}")
    path = folder / "probe.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(**overrides):
    """A tiny ``Wav2Vec2Config`` (layer-norm front-end, so padded probe batches are exact)."""
    import transformers

    kw = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=False, apply_spec_augment=False, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    kw.update(overrides)
    return transformers.Wav2Vec2Config(**kw)


def waveforms(n: int, seed: int, num_samples: int = 8000) -> torch.Tensor:
    """``(n, num_samples)`` seeded float32 waveforms (tones with noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE
    rows = []
    for _ in range(n):
        f = rng.uniform(100, 400)
        x = 0.3 * np.sin(2 * np.pi * f * t) + 0.1 * rng.standard_normal(num_samples)
        rows.append(x)
    return torch.tensor(np.stack(rows), dtype=torch.float32)


class RankSlice(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...``, read from ``torch.distributed`` when iterated.

    With Lightning's ``use_distributed_sampler=False`` this replaces the shuffling
    ``DistributedSampler`` Lightning gives training loaders: step ``s`` of two processes with a
    batch of ``b`` each then covers the clips of step ``s`` of one process with a batch of ``2b``.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    @staticmethod
    def _world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._world()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        rank, world = self._world()
        return len(range(rank, self.n, world))


def spread_loss(h: torch.Tensor) -> torch.Tensor:
    """Per-clip variance + covariance loss of ``h (B, T, D)``, averaged over clips."""
    import torch.nn.functional as F

    losses = []
    for clip in h:
        x = clip - clip.mean(0)
        std = (x.var(0) + 1e-4).sqrt()
        cov = (x.T @ x) / (x.shape[0] - 1)
        off = cov - torch.diag(torch.diag(cov))
        losses.append(F.relu(1 - std).mean() + (off ** 2).sum() / x.shape[1])
    return torch.stack(losses).mean()


def lightning_module(lr: float = 1e-2, seed: int = 0, base: str = "lightning"):
    """Build the tiny ``LightningModule`` (from ``lightning`` or ``pytorch_lightning``)."""
    import torch.nn.functional as F
    import transformers

    if base == "lightning":
        from lightning.pytorch import LightningModule
    else:
        from pytorch_lightning import LightningModule

    class TinySSLModule(LightningModule):
        """Spread the frames for SPREAD_STEPS steps, then predict frame t+1's conv features."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.model = transformers.Wav2Vec2Model(tiny_config())
            self.head = torch.nn.Linear(32, 32)
            self.training_steps = 0

        def _loss(self, wav: torch.Tensor) -> torch.Tensor:
            out = self.model(wav)
            pred = self.head(out.last_hidden_state[:, :-1])
            target = out.extract_features[:, 1:].detach()
            return F.mse_loss(pred, target)

        def training_step(self, batch, batch_idx):
            self.training_steps += 1
            if self.global_step < SPREAD_STEPS:
                loss = spread_loss(self.model(batch[0]).last_hidden_state)
                # the head joins the graph with weight 0, as DDP wants every parameter used
                loss = loss + 0.0 * sum(p.sum() for p in self.head.parameters())
            else:
                loss = self._loss(batch[0])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch[0]), sync_dist=True)

        def configure_optimizers(self):
            # eps=1e-4, not 1e-8: Adam's first steps move each weight by about lr * sign(grad),
            # so with a tiny eps a weight whose gradient is at rounding level jumps by +-lr on
            # float noise, and one and two processes (gradients summed in another order) part
            # by 5e-4 relative within 8 steps; with eps=1e-4 they stay within 1e-6
            return torch.optim.Adam(self.parameters(), lr=lr, eps=1e-4)

    return TinySSLModule()
