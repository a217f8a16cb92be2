"""Where every cluster-facing setting of the pipelines lives: the image and the GPU node pool.

The image reference is one setting (VISALIGN_IMAGE at compile time: a tag or a digest) written
into every component of the compiled IR. GPU settings are applied by one helper to the GPU
steps (rollout, train); kfp.local ignores them, the compiled IR carries them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_IMAGE = "ghcr.io/visalign/visalign:0.1.0"


def image() -> str:
    """The image every component runs in; set VISALIGN_IMAGE (tag or @sha256 digest) to change it."""
    return os.environ.get("VISALIGN_IMAGE", DEFAULT_IMAGE)


@dataclass(frozen=True)
class GpuPool:
    """The GPU node pool of a cluster; the defaults match NVIDIA's GPU operator labels and taints."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    toleration_key: str = "nvidia.com/gpu"
    toleration_effect: str = "NoSchedule"
    shm_size: str = "16Gi"  # /dev/shm for dataloader workers and NCCL; the container default is 64 MiB


def use_gpu(task, pool: GpuPool = GpuPool()):
    """Put `task` on the GPU pool: accelerator type and limit, node selector, toleration, /dev/shm."""
    from kfp import kubernetes

    task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.accelerator_limit)
    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(task, key=pool.toleration_key, operator="Exists", effect=pool.toleration_effect)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=pool.shm_size)
    return task
