"""IPA (METHODS.md section 4): progressive rounds of collect -> pairs -> train -> evaluate.

    collect    contrastive sampling on clean and perturbed images, then reflective revision
    verify     four binary criteria against the reference (local model or an OpenAI-compatible endpoint)
    pairs      verified x unverified preference pairs, and the next round's pending seeds
    summary    what a run did, round by round (read from a kfp.local run directory)

Its paper and toy values and its rules: visalign/recipes/ipa.py.
"""
