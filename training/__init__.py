"""Rationale-first recommenders trained on released dataset versions (SFT, GRPO, evaluation)."""
