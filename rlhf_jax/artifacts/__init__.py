"""What one stage writes and another reads: models and their tokenizers (`models`), the reward model and its
spec (`reward_model`), comparison data (`comparisons`) and pretraining documents (`documents`). Below the
stages, so that no stage imports another (tests/test_imports.py)."""
