"""rlhf_jax: pretraining -> SFT -> reward model -> PPO, the InstructGPT recipe, in JAX/Flax."""

__version__ = "0.1.0"
