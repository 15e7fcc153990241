"""A tiny ``Wav2Vec2ForPreTraining`` trained by the real ``transformers.Trainer`` (test helper).

With :func:`make_trainer`'s settings (contrastive temperature 1, learning rate 5e-3, constant),
the RankMe of the last layer on the probe rises over the first evaluations and then falls, so
the best evaluation is neither the first nor the last.

The data collator does what wav2vec 2.0 pretraining scripts do: it draws the masked time steps
(``_compute_mask_indices``) and the negatives of the contrastive loss
(``_sample_negative_indices``) from a generator seeded by the clips in the batch, so a resumed
run draws the same ones as an uninterrupted run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning"))

from tinyssl import tiny_config, waveforms  # noqa: E402

NUM_SAMPLES = 8000


def pretraining_model(seed: int = 0):
    """A 2-layer, 32-dim ``Wav2Vec2ForPreTraining`` with seeded random weights."""
    import transformers

    cfg = tiny_config(apply_spec_augment=True, mask_time_prob=0.3, mask_time_length=2,
                      num_codevector_groups=2, num_codevectors_per_group=8, codevector_dim=16,
                      proj_codevector_dim=16, num_negatives=4, feat_quantizer_dropout=0.0,
                      contrastive_logits_temperature=1.0)
    torch.manual_seed(seed)
    return transformers.Wav2Vec2ForPreTraining(cfg)


class Clips(torch.utils.data.Dataset):
    """Fixed-length seeded clips, each with its index (the collator seeds its draws by it)."""

    def __init__(self, n: int, seed: int) -> None:
        self.wav = waveforms(n, seed=seed, num_samples=NUM_SAMPLES)

    def __len__(self) -> int:
        return len(self.wav)

    def __getitem__(self, i: int) -> dict:
        return {"input_values": self.wav[i], "index": i}


class PretrainingCollator:
    """Stack clips; add ``mask_time_indices`` and ``sampled_negative_indices``."""

    def __init__(self, model) -> None:
        self.config = model.config
        self.frames = int(model._get_feat_extract_output_lengths(NUM_SAMPLES))

    def __call__(self, items: list[dict]) -> dict:
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            _compute_mask_indices,
            _sample_negative_indices,
        )

        wav = torch.stack([it["input_values"] for it in items])  # "index" is left out
        shape = (len(items), self.frames)
        seed = 1000 + sum(int(it["index"]) * 31 ** j for j, it in enumerate(items))
        state = np.random.get_state()
        np.random.seed(seed % (2 ** 32))  # transformers draws with numpy's global generator
        try:
            mask = _compute_mask_indices(shape, mask_prob=self.config.mask_time_prob,
                                         mask_length=self.config.mask_time_length, min_masks=2)
            negatives = _sample_negative_indices(shape, self.config.num_negatives,
                                                 mask_time_indices=mask)
        finally:
            np.random.set_state(state)
        return {"input_values": wav,
                "mask_time_indices": torch.tensor(mask, dtype=torch.bool),
                "sampled_negative_indices": torch.tensor(negatives, dtype=torch.long)}


def make_trainer(out: Path, callbacks: list, *, max_steps: int = 8, **overrides):
    """A ``Trainer`` on 8 training clips (2 steps per epoch), evaluating and saving every 2 steps."""
    from transformers import Trainer, TrainingArguments

    model = pretraining_model()
    kw = dict(use_cpu=True, per_device_train_batch_size=4, per_device_eval_batch_size=4,
              max_steps=max_steps, eval_strategy="steps", eval_steps=2, save_strategy="steps",
              save_steps=2, logging_steps=1, learning_rate=5e-3, lr_scheduler_type="constant",
              report_to=[], disable_tqdm=True, seed=0, prediction_loss_only=True,
              remove_unused_columns=False, dataloader_num_workers=0)
    kw.update(overrides)
    args = TrainingArguments(str(out), **kw)
    return Trainer(model=model, args=args, train_dataset=Clips(8, seed=1),
                   eval_dataset=Clips(4, seed=2), data_collator=PretrainingCollator(model),
                   callbacks=callbacks)
