"""MIA-DPO (METHODS.md section 2): what it adds to the shared stages.

    compose    multi-image prompts from single-image seeds (sequence, grid collage, pic-in-pic)
    attention  the attention ratios of a response to the target image (from stages/capture.py)
    select     attention-aware selection of rejected responses into pairs

Its paper and toy values and its rules: visalign/recipes/mia_dpo.py.
"""
