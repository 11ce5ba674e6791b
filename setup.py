"""rlhf_jax: pretraining -> SFT -> reward model -> PPO (InstructGPT's recipe) in JAX/Flax.

`pip install -e .` gives the library and its command-line entry points. Extras:
  test       pytest and what the tests need
  hf         transformers + safetensors + torch (CPU torch 2.13.0 satisfies it): Hugging Face parity tests
             and checkpoint conversion
  notebooks  jupyter, nbclient and matplotlib, to run the notebooks
  tfds       tensorflow-datasets data sources (array_record files; no TensorFlow needed)
`constraints.txt` pins the exact versions CI uses: `pip install -c constraints.txt -e .[test,hf,tfds,notebooks]`.
"""

from setuptools import find_packages, setup

setup(
    name="rlhf_jax",
    version="0.1.0",
    description="InstructGPT-style RLHF (pretrain, SFT, reward model, PPO-ptx) in JAX/Flax",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rlhf_jax", "rlhf_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "sentencepiece>=0.2.0",
        "numpy>=2.0",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",  # The pipeline's report.md and a sweep's results.png.
        "datasketch>=1.6",  # MinHash and LSH for near-duplicate removal (rlhf_jax/data/clean.py).
        "interegular>=0.3.3",  # Regular expression -> automaton for constrained decoding (rlhf_jax/constrain.py).
        "filelock>=3.12",  # JAX's compilation cache locks its directory when capped (rlhf_jax/compile_cache.py).
    ],
    extras_require={
        "test": ["pytest>=8.0"],
        "hf": ["transformers>=4.57", "safetensors>=0.4", "torch>=2.6"],
        "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.10", "ipykernel", "matplotlib>=3.8"],
        "tfds": ["tensorflow-datasets>=4.9.10", "array-record>=0.8"],
    },
)
