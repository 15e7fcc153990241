#!/usr/bin/env python
"""Greedy (Viterbi) CTC decoding of a fine-tuned fairseq HuBERT checkpoint, to a WER file.

fairseq's ``examples/speech_recognition/new/infer.py`` does not import on Python 3.11
(mutable dataclass defaults in its config), so the recipe decodes with this script instead:
for a CTC model without a language model, fairseq's ``infer_viterbi`` is the best path per
frame with repeats merged and blanks removed, which is what this computes.

Output: ``<out>`` with ``WER: <percent>`` on the first line (the format ``collect_wer.py`` and
fairseq's own WER files use) and the error / word counts on the second; hypotheses go to
``<out>.hyp`` (one line per utterance, manifest order).

Usage::

    python recipes/paper/full/decode_ctc.py FT_DIR/checkpoints/checkpoint_best.pt \\
        --data $FT_DATA --subset test-other --user-dir recipes/paper/full/fairseq_ctc_fix \\
        --out FT_DIR/decode/test-other/wer
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("decode_ctc")


def letters_to_words(text: str) -> list[str]:
    """``"H E L L O | W O R L D |"`` -> ``["HELLO", "WORLD"]`` (fairseq's ``letter`` post-processing)."""
    return text.replace(" ", "").replace("|", " ").split()


def greedy_ctc(ids: list[int], blank: int) -> list[int]:
    """Merge repeated frame labels, then drop blanks."""
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="fine-tuned checkpoint (hubert_ctc / hubert_ctc_patched)")
    p.add_argument("--data", required=True, help="folder with <subset>.tsv, <subset>.ltr, dict.ltr.txt")
    p.add_argument("--subset", required=True, help="e.g. test-other")
    p.add_argument("--user-dir", default=None, help="fairseq user dir to import (fairseq_ctc_fix)")
    p.add_argument("--out", required=True, help="WER file to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda[:N]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import soundfile as sf
    import torch
    from fairseq import checkpoint_utils, utils

    from sslvitals.integrations.fairseq.safe_load import allow_fairseq_checkpoints

    allow_fairseq_checkpoints()  # torch's safe loader, with the classes fairseq checkpoints hold
    if args.user_dir:
        utils.import_user_module(argparse.Namespace(user_dir=str(Path(args.user_dir).resolve())))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.checkpoint], arg_overrides={"data": args.data, "label_dir": args.data})
    model = models[0].to(device).eval()
    dictionary = task.target_dictionary
    blank = dictionary.bos()  # fairseq's CTC criterion uses index 0 (<s>) as the blank
    normalize = bool(getattr(task.cfg, "normalize", False))
    data = Path(args.data)
    lines = (data / f"{args.subset}.tsv").read_text(encoding="utf-8").splitlines()
    root, entries = Path(lines[0].strip()), [ln.split("\t")[0] for ln in lines[1:] if ln.strip()]
    refs = (data / f"{args.subset}.ltr").read_text(encoding="utf-8").splitlines()
    if len(refs) != len(entries):
        raise SystemExit(f"{args.subset}.tsv has {len(entries)} entries but {args.subset}.ltr {len(refs)} lines")
    errors = words = 0
    hyps = []
    with torch.no_grad():
        for rel, ref in zip(entries, refs):
            wav, sr = sf.read(str(root / rel), dtype="float32")
            if sr != 16000:
                raise SystemExit(f"{rel}: sample rate {sr}, expected 16000")
            x = torch.from_numpy(wav).to(device)[None]
            if normalize:
                x = torch.nn.functional.layer_norm(x, x.shape)
            out = model(source=x, padding_mask=torch.zeros_like(x, dtype=torch.bool))
            emissions = out["encoder_out"]  # (T, B, V)
            ids = greedy_ctc(emissions[:, 0].argmax(-1).tolist(), blank)
            hyp = letters_to_words(dictionary.string(torch.tensor(ids, dtype=torch.long)))
            ref_words = letters_to_words(ref)
            errors += word_errors(ref_words, hyp)
            words += len(ref_words)
            hyps.append(" ".join(hyp))
    wer = 100.0 * errors / max(1, words)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(f"WER: {wer}\nerrors / reference words = {errors} / {words}\n", encoding="utf-8")
    Path(str(out_path) + ".hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    logger.info("%s: WER %.2f %% (%d / %d words, %d utterances)", args.subset, wer, errors, words, len(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
