"""Kubeflow pipelines for visalign: thin component wrappers around the stages, one pipeline per recipe."""

from __future__ import annotations


def pipelines() -> dict:
    """Recipe name -> pipeline function (imported lazily: kfp is only needed here)."""
    from visalign_pipelines.ipa import ipa
    from visalign_pipelines.mia_dpo import mia_dpo
    from visalign_pipelines.mpo import mpo
    from visalign_pipelines.seva import seva

    return {"seva": seva, "ipa": ipa, "mia-dpo": mia_dpo, "mpo": mpo}
