"""The shared stages every recipe's pipeline is built from, one module per stage:

    sample -> augment -> rollout -> filter -> train -> evaluate -> register

with the pieces those stages run: augment_pixel (the pixel augmentations), capture (rollout's
attention capture, `rollout.capture_attention`), mpo_loss (train's delta-aware MPO loss, a
train option any recipe may use), train_node (one process of a multi-node TrainJob), benchmarks
(reading VLMEvalKit TSVs) and correctness (step-by-step answer checking, shared by evaluate and
MPO's pairs). Stages import the recipes, infra and models; never a paper's package.
"""
