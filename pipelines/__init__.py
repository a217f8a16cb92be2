"""Kubeflow pipelines for visalign: thin component wrappers around the stages, one pipeline per recipe."""

from __future__ import annotations


def pipelines() -> dict:
    """Recipe name -> pipeline function (imported lazily: kfp is only needed here)."""
    from visalign_pipelines.seva import seva

    return {"seva": seva}
