"""rlhf_jax: pretraining -> SFT -> reward model -> PPO, the InstructGPT recipe, in JAX/Flax."""

from rlhf_jax import hostmem as _hostmem

__version__ = "0.1.0"

# Before jax starts its CPU client: XLA's per-call scratch buffers are reused instead of mapped afresh on
# every call (a third of a toyworld training step was page faults; rlhf_jax/hostmem.py).
_hostmem.keep_freed_memory()
