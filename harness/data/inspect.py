"""What a careful reader checks about an arm's data: counts, lengths, padding, document crossings,
NSP balance, the mask rate and split, masks per sequence over epochs, unknown tokens, an example."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from harness.config import RunConfig
from harness.data.batches import PretrainingBatches
from harness.data.formats import IS_NEXT, NO_PAIR
from harness.data.masking import IGNORE, mask_sequence
from harness.data.pipeline import PreparedData
from harness.data.tokenizer import TokenizedCorpus, unknown_token_rate


def _lengths(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": round(float(values.mean()), 2),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def data_statistics(
    data: PreparedData, config: RunConfig, steps: int = 50, sample: int = 2000, epochs: int | None = None
) -> dict[str, Any]:
    sequences = data.train
    lengths = sequences.lengths
    masking = config.masking
    specials = data.specials
    epochs = epochs or (2 * masking.dupe_factor if masking.kind == "static" else 10)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(sequences), size=min(sample, len(sequences)), replace=False)

    def mask_at(index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        ids, _, _ = sequences[index]
        return mask_sequence(ids, specials, data.vocab_size, masking, config.train.seed, epoch, index,
                             sequences.word_starts_of(index))  # fmt: skip

    # the mask over a sample of sequences, as served in epoch 0
    maskable = masked = as_mask = as_random = masked_specials = 0
    for index in picked:
        ids, _, _ = sequences[index]
        inputs, labels = mask_at(index, 0)
        predicted = labels != IGNORE
        special = np.isin(ids, specials.ids)
        maskable += int((~special).sum())
        masked += int(predicted.sum())
        masked_specials += int((predicted & special).sum())  # checked, not assumed
        replaced = inputs[predicted]
        as_mask += int((replaced == specials.mask).sum())
        as_random += int(((replaced != specials.mask) & (replaced != labels[predicted])).sum())

    distinct = [len({mask_at(int(index), epoch)[1].tobytes() for epoch in range(epochs)}) for index in picked[:50]]

    # steps as the trainer would get them
    batches = PretrainingBatches(
        sequences, specials, data.vocab_size, masking, config.train.seed, config.train.micro_batch_size,
        config.train.batch_size, config.train.tokens_per_step, data.train_copies,
    )  # fmt: skip
    real = padded = 0
    step_tokens, step_sequences = [], []
    for _ in range(steps):
        micro_batches = batches.next_step()
        step_tokens.append(sum(mb.real_tokens for mb in micro_batches))
        step_sequences.append(sum(mb.input_ids.shape[0] for mb in micro_batches))
        real += step_tokens[-1]
        padded += sum(mb.input_ids.numel() for mb in micro_batches)

    pairs = sequences.nsp_labels != NO_PAIR
    corpus = TokenizedCorpus.load(data.stage_dirs["token_ids"] / "train")
    sentence_stats = data.stats("sentences").get("train", {})
    example_index = int(picked[0])
    _, types, nsp = sequences[example_index]
    inputs, _ = mask_at(example_index, 0)
    stage_costs = {}
    for stage, directory in data.stage_dirs.items():
        cost = directory / "build.json"
        if cost.is_file():
            stage_costs[stage] = json.loads(cost.read_text())
    return {
        "stages": stage_costs,
        "format": config.data.format,
        "nsp": config.data.nsp,
        "tokenizer": {"kind": config.data.tokenizer.kind, "vocab_size": data.vocab_size},
        "documents": data.stats("documents").get("documents", {}),
        "documents_without_sentences": sentence_stats.get("documents_without_sentences", 0),
        "sentences": sentence_stats.get("sentences", corpus.num_sentences),
        "sequences": len(sequences),
        "tokens": int(lengths.sum()),
        "tokens_per_sequence": _lengths(lengths),
        "sequences_spanning_documents": int((sequences.documents > 1).sum()),
        "sequences_spanning_documents_without_nsp_pair": int(((sequences.documents > 1) & ~pairs).sum()),
        "nsp_pairs": int(pairs.sum()),
        "nsp_positive_rate": round(float((sequences.nsp_labels[pairs] == IS_NEXT).mean()), 4) if pairs.any() else None,
        "tokens_per_step": _lengths(np.asarray(step_tokens)),
        "sequences_per_step": _lengths(np.asarray(step_sequences)),
        "padding_fraction": round(1 - real / padded, 4),
        "mask": {
            "kind": masking.kind,
            "rate": round(masked / max(1, maskable), 4),
            "as_mask_token": round(as_mask / max(1, masked), 4),
            "as_random_token": round(as_random / max(1, masked), 4),
            "unchanged": round(1 - (as_mask + as_random) / max(1, masked), 4),
            "special_tokens_masked": masked_specials,
            "sample_sequences": len(picked),
        },
        "distinct_masks_per_sequence": {"epochs": epochs, "mean": float(np.mean(distinct)), "min": min(distinct)},
        "unknown_token_rate": round(unknown_token_rate(corpus.tokens, specials), 6),
        "example": {
            "nsp_label": nsp,
            "segment_ids": "".join(str(t) for t in types.tolist()),
            "text": data.tokenizer.decode(inputs.tolist(), skip_special_tokens=False),
        },
    }


def format_statistics(arm: str, stats: dict[str, Any]) -> str:
    docs = stats["documents"]
    tps, spl = stats["tokens_per_step"], stats["tokens_per_sequence"]
    mask = stats["mask"]
    nsp = stats["nsp_positive_rate"]
    lines = [
        f"[{arm}] format {stats['format']}{' + NSP' if stats['nsp'] else ''}, "
        f"{stats['tokenizer']['kind']} vocab {stats['tokenizer']['vocab_size']:,}",
        f"  documents        {docs.get('train', 0):,} train / {docs.get('heldout', 0):,} held out "
        f"({stats['documents_without_sentences']} without sentences dropped)",
        f"  sentences        {stats['sentences']:,}",
        f"  sequences        {stats['sequences']:,}, {stats['tokens']:,} tokens",
        f"  tokens/sequence  mean {spl['mean']}, p50 {spl['p50']:.0f}, p95 {spl['p95']:.0f}, max {spl['max']}",
        f"  per step         {tps['mean']:,.0f} tokens (p95 {tps['p95']:,.0f}), "
        f"{stats['sequences_per_step']['mean']:.1f} sequences, padding {stats['padding_fraction']:.1%}",
        f"  cross-document   {stats['sequences_spanning_documents']:,} sequences span >1 document "
        f"({stats['sequences_spanning_documents_without_nsp_pair']:,} outside NotNext pairs)",
        f"  NSP              {stats['nsp_pairs']:,} pairs, positive rate {nsp if nsp is not None else '-'}",
        f"  mask             {mask['kind']}: rate {mask['rate']:.4f}, split {mask['as_mask_token']:.3f} mask / "
        f"{mask['as_random_token']:.3f} random / {mask['unchanged']:.3f} kept, "
        f"{mask['special_tokens_masked']} special tokens masked (sample of {mask['sample_sequences']})",
        f"  masks/sequence   {stats['distinct_masks_per_sequence']['mean']:.2f} distinct over "
        f"{stats['distinct_masks_per_sequence']['epochs']} epochs",
        f"  unknown tokens   {stats['unknown_token_rate']:.4%}",
        f"  example          segments {stats['example']['segment_ids']}",
        f"                   {stats['example']['text'][:600]}",
    ]
    costs = ", ".join(
        f"{stage} {c['build_s']:.1f}s/{c['peak_rss_mb']:.0f}MB"
        for stage, c in stats["stages"].items()
        if c.get("peak_rss_mb")
    )
    if costs:
        lines.append(f"  stage builds     {costs} (time / peak RSS when built)")
    return "\n".join(lines)
