#!/usr/bin/env python3
"""A miniature of SpeechBrain's BEST-RQ pretraining recipe, for the sslvitals tests.

It has the stock recipe's structure (recipes/LibriSpeech/self-supervised-learning/BEST-RQ):
a ``Brain`` subclass whose ``compute_forward`` computes filterbanks, normalises them, pads them
to a multiple of the stacking factor, takes random-projection targets of the masked frames,
replaces those frames with noise and runs the CNN, the conformer encoder (through
``EncoderWrapper``) and the output layer; ``on_stage_end`` logs the epoch with the stage logger
and saves a checkpoint with the valid loss in its meta. The data are CSV manifests; the recipe
knows nothing of sslvitals.

    python train.py hparams/BEST-RQ.yaml --data_folder DIR --output_folder OUT
"""
import sys
from functools import partial

import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

import speechbrain as sb
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.lobes.models.BESTRQ import brq_mask_collate_fn


class MiniBestRQBrain(sb.core.Brain):
    """BEST-RQ pretraining: predict the quantised targets of masked frames."""

    def compute_forward(self, batch, stage):
        wavs, wav_lens, mask = (t.to(self.device) for t in batch)
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens, epoch=self.hparams.epoch_counter.current)
        stack = self.hparams.pad_to_divisible_by
        feats = stack_pad(feats, stack)
        frames = mask[::stack] // stack
        batch_size, time, n_mels = feats.shape
        stacked = feats.view(batch_size, time // stack, stack * n_mels)
        targets = self.modules.Quantizer(stacked[:, frames, :])
        noise = torch.normal(self.hparams.noise_mean, self.hparams.noise_std,
                             size=(batch_size, mask.shape[0], n_mels), device=self.device)
        feats[:, mask, :] = noise
        hidden = self.modules.wrapper(self.modules.CNN(feats), wav_lens)
        logits = self.modules.linear(hidden)[:, frames, :]
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def compute_objectives(self, predictions, batch, stage):
        logits, targets = predictions
        if stage != sb.Stage.TRAIN:
            self.accuracy.append((logits.argmax(-1) == targets).float().mean().item())
        return F.cross_entropy(logits, targets)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step:
            self.hparams.noam_annealing(self.optimizer)

    def on_stage_start(self, stage, epoch):
        if stage != sb.Stage.TRAIN:
            self.accuracy = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            stats["accuracy"] = sum(self.accuracy) / max(len(self.accuracy), 1)
            self.hparams.train_stage_logger.log_stats(
                stats_meta={"epoch": epoch, "steps": self.optimizer_step,
                            "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats=self.train_stats, valid_stats=stats)
            self.checkpointer.save_and_keep_only(
                end_of_epoch=True, num_to_keep=self.hparams.num_to_keep,
                meta={"valid_loss": stage_loss})


def stack_pad(feats, multiple):
    """Zero-pad the time axis of (B, T, F) features to a multiple of ``multiple``."""
    extra = (-feats.shape[1]) % multiple
    return F.pad(feats, (0, 0, 0, extra))


def dataio_prepare(hparams):
    datasets = {}
    for split in ("train", "valid"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=hparams[f"{split}_csv"], replacements={"data_root": hparams["data_folder"]})

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig"])

    hop = hparams["sample_rate"] * hparams["hop_length"] // 1000

    def num_frames(num_samples):
        return (num_samples // hop + 1).to(torch.long)

    collate = partial(brq_mask_collate_fn, get_out_len_fn=num_frames,
                      mask_prob=hparams["mask_prob"], mask_length=hparams["mask_length"],
                      n_mels=hparams["n_mels"])
    valid_loader = SaveableDataLoader(datasets["valid"], collate_fn=collate,
                                      batch_size=hparams["batch_size"])
    train_kwargs = {"batch_size": hparams["batch_size"], "collate_fn": collate, "shuffle": True}
    return datasets["train"], valid_loader, train_kwargs


def main():
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams.update(run_opts)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    train_data, valid_loader, train_kwargs = dataio_prepare(hparams)
    brain = MiniBestRQBrain(modules=hparams["modules"], opt_class=hparams["optimizer"],
                            hparams=hparams, run_opts=run_opts,
                            checkpointer=hparams["checkpointer"])
    brain.fit(brain.hparams.epoch_counter, train_data, valid_loader,
              train_loader_kwargs=train_kwargs, progressbar=False)


if __name__ == "__main__":
    main()
