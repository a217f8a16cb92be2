"""The platform plumbing every stage and entry point may use; it imports no stage.

    store       s3:// and local paths: reads, writes, directory sync (MinIO or any S3 endpoint)
    tracking    MLflow runs and metrics
    stack       the local SeaweedFS + MLflow stack (`visalign stack`); its settings in stack_settings
    kfp_client  `visalign upload` / `visalign submit` against Kubeflow Pipelines
    trainjob    multi-node training as a Kubeflow Trainer TrainJob (its worker: stages/train_node.py)
"""
