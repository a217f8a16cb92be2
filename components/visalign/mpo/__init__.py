"""MPO (METHODS.md section 3): what it adds to the shared stages.

    pairs      correctness pairs (with a reference) and DropoutNTP pairs (without)

Its loss is a train option any recipe may use (visalign/stages/mpo_loss.py), and its answer
checking is shared with evaluate (visalign/stages/correctness.py), so both sit with the stages.
Its paper and toy values and its rules: visalign/recipes/mpo.py.
"""
