"""The reference model's log-probs, computed once per unique pair before training (vision data too).

DPO and MPO score every pair under the frozen reference on every step: 20-30% of a step on a VLM,
repeated for each repeat and epoch (SeVa feeds its pairs twice, MIA-DPO trains 3 epochs), and with
full parameters a whole second copy of the model held in memory. TRL 1.16 offers
precompute_ref_log_probs but refuses it for vision datasets, and would run it over the dataset as
given, repeats included. Here the pass runs over the unique pairs only (batched, no grad, no
checkpointing, the adapter disabled: TRL's own `compute_ref_log_probs`), the values are kept in a
file keyed by pair id and a digest of the model, processor, max_length and dtype (a resumed or
retried train step reuses them), and training reads them from the batch.

How TRL is extended, in this one place: `precomputed_reference_trainer(DPOTrainer or MPOTrainer)`
returns a subclass that
- turns `args.precompute_ref_log_probs` on from a class placed between DPOTrainer and
  transformers' Trainer in the method order, i.e. after DPOTrainer's vision refusal and before it
  decides whether to load a reference copy (it then loads none) and calls its precompute hook;
- overrides that hook, `_precompute_ref_logps`, with the unique-pair pass and the cache;
- wraps the collator so the two values travel with each batch (TRL's vision collator drops them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from visalign import schema

log = logging.getLogger(__name__)

CACHE_FILE = "reference_logps.json"
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
ID_COLUMN = "pair_id"  # carried in the train dataset so repeated rows find their pair's values


def should_precompute(setting: str, *, data_repeats: int, num_epochs: float, lora_r: int) -> bool:
    """train.precompute_reference: on, off, or auto = on where it saves work (each pair is seen more
    than once, or full parameters, where it also spares the reference copy)."""
    if setting == "auto":
        return data_repeats > 1 or num_epochs > 1 or lora_r == 0
    return setting == "on"


def pair_digest(pair: schema.Pair, pairs_dir: str | os.PathLike) -> str:
    """What a pair's reference log-probs depend on besides the model: its text and its image bytes."""
    from visalign.stages.resume import file_digest

    return schema.stable_id(pair.id, pair.prompt, pair.chosen, pair.rejected,
                            [file_digest(Path(pairs_dir) / im) for im in pair.images])


class ReferenceCache:
    """reference_logps.json: {"key": {...}, "pairs": {pair id: {"digest", "chosen", "rejected"}}}.

    `key` names the model (resume.model_digest: weights, config, processor and tokenizer files),
    max_length and dtype; a file made under another key is ignored whole, a pair whose text or
    images changed is computed again."""

    def __init__(self, folder: str | os.PathLike, key: dict[str, Any], digests: dict[str, str]):
        self.path = Path(folder) / CACHE_FILE
        self.key, self.digests = key, digests
        self.stats: dict[str, Any] = {"pairs": len(digests), "computed": 0, "reused": 0, "seconds": 0.0}

    def load(self) -> dict[str, tuple[float, float]]:
        if not self.path.exists():
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            log.warning("train: %s unreadable (%s): computing the reference log-probs again", self.path, e)
            return {}
        if saved.get("key") != self.key:
            log.info("train: %s was made with another model, processor, max_length or dtype: not reused", self.path)
            return {}
        return {pid: (v["chosen"], v["rejected"]) for pid, v in saved.get("pairs", {}).items()
                if self.digests.get(pid) == v.get("digest")}

    def save(self, values: dict[str, tuple[float, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pairs = {pid: {"digest": self.digests[pid], "chosen": c, "rejected": r} for pid, (c, r) in values.items()}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"key": self.key, "pairs": pairs}))
        os.replace(tmp, self.path)  # a process killed while writing leaves the previous file


class ReferenceColumns:
    """A preference collator that also carries the precomputed values as tensors and drops the id."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        examples = [dict(e) for e in examples]
        refs = {c: [e.pop(c) for e in examples] for c in REF_COLUMNS if c in examples[0]}
        for e in examples:
            e.pop(ID_COLUMN, None)
        out = self.inner(examples)
        for column, values in refs.items():
            out[column] = torch.tensor(values, dtype=torch.float32)
        return out


def precomputed_reference_trainer(base: type) -> type:
    """`base` (TRL's DPOTrainer or a subclass) reading reference log-probs computed once per pair.
    Construct it with `reference_cache=ReferenceCache(...)`; see the module docstring."""
    from trl.trainer.base_trainer import _BaseTrainer

    class _PrecomputeFlag(_BaseTrainer):
        # Runs inside DPOTrainer.__init__'s super().__init__ call: its vision refusal has passed, its
        # reference-copy decision and precompute hook come next and read the flag set here.
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["args"].precompute_ref_log_probs = True
            super().__init__(*args, **kwargs)

    class PrecomputedReferenceTrainer(base, _PrecomputeFlag):
        def __init__(self, *args: Any, reference_cache: ReferenceCache, **kwargs: Any):
            self.reference_cache = reference_cache
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            self.data_collator = ReferenceColumns(self.data_collator)
            self.precompute_ref_logps = True  # DPOTrainer read the flag before _PrecomputeFlag set it
            values = self._reference_values(dataset, batch_size)
            ids = dataset[ID_COLUMN]
            dataset = dataset.add_column(REF_COLUMNS[0], [values[i][0] for i in ids])
            return dataset.add_column(REF_COLUMNS[1], [values[i][1] for i in ids])

        def _reference_values(self, dataset, batch_size) -> dict[str, tuple[float, float]]:
            from accelerate.utils import broadcast_object_list

            cache = self.reference_cache
            known = [cache.load() if self.accelerator.is_main_process else None]
            broadcast_object_list(known, from_process=0)  # every rank runs the same batches
            known = known[0]
            first: dict[str, int] = {}
            for row, pid in enumerate(dataset[ID_COLUMN]):
                first.setdefault(pid, row)
            todo = [row for pid, row in first.items() if pid not in known]
            cache.stats["reused"] = len(first) - len(todo)
            if todo:
                start = time.perf_counter()
                known.update(self._compute(dataset.select(todo), batch_size))
                cache.stats.update(computed=len(todo), seconds=round(time.perf_counter() - start, 3))
                if self.accelerator.is_main_process:
                    cache.save(known)
                self.accelerator.wait_for_everyone()
            log.info("train: reference log-probs of %d unique pairs: %d computed, %d reused from %s",
                     len(first), len(todo), cache.stats["reused"], cache.path)
            return known

        def _compute(self, subset, batch_size) -> dict[str, tuple[float, float]]:
            """TRL's precompute loop (its `_precompute_ref_logps`), over `subset`, keyed by pair id."""
            import torch
            from torch.utils.data import DataLoader
            from trl.models import prepare_deepspeed

            loader = self.accelerator.prepare(DataLoader(
                subset.remove_columns([c for c in subset.column_names if c in REF_COLUMNS]),
                batch_size=batch_size, collate_fn=self.data_collator, shuffle=False,
                num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory))
            if self.ref_model is None and self.is_deepspeed_enabled:  # params still on CPU (ZeRO-2) or sharded (3)
                if self._precompute_engine is None:
                    self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            else:
                model = self.ref_model or self.model
            chosen, rejected = [], []
            total, done = len(subset), 0
            for batch in loader:
                c, r = self.compute_ref_log_probs(model, batch)
                c, r = self.accelerator.gather_for_metrics((c, r))
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
                done += len(c)
                if done == total or len(chosen) % 20 == 0:
                    log.info("train: reference log-probs %d/%d pairs", done, total)
            chosen_t, rejected_t = torch.cat(chosen).tolist(), torch.cat(rejected).tolist()
            return {pid: (c, r) for pid, c, r in zip(subset[ID_COLUMN], chosen_t, rejected_t, strict=True)}

    return PrecomputedReferenceTrainer
