"""Full-size experiment runs, checked against their expected results. Slow (minutes each): kept out of the
default suite. Run them on one device, as they are configured:

  RLHF_JAX_TEST_DEVICES=1 python -m pytest -m slow

The Shakespeare check needs the Tiny Shakespeare text: `RLHF_JAX_SHAKESPEARE=path/to/tinyshakespeare.txt`
(default: ../shared/data/tinyshakespeare.txt)."""

import json
import os

import pytest

from rlhf_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.environ.get("RLHF_JAX_SHAKESPEARE",
                             os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"))

def _run(experiment, workdir, *extra):
  import jax
  if jax.device_count() != 1:
    pytest.skip("full runs are configured for one device: RLHF_JAX_TEST_DEVICES=1 python -m pytest -m slow")
  assert main_lib.main(["--config", os.path.join(ROOT, "experiments", experiment), "--workdir", str(workdir),
                        *extra]) == 0
  return json.load(open(os.path.join(workdir, "summary.json")))


@pytest.mark.slow
def test_shakespeare_char_reaches_the_target_validation_loss(tmp_path):
  if not os.path.exists(SHAKESPEARE):
    pytest.skip(f"no Tiny Shakespeare text at {SHAKESPEARE}")
  summary = _run("shakespeare_char.py", tmp_path / "run", f"--config.data.path={SHAKESPEARE}")
  assert summary["eval/loss"] <= 1.89  # Measured 1.78-1.79 over three seeds.


@pytest.mark.slow
def test_shakespeare_char_nanogpt_matches_nanogpt_on_the_whole_split(tmp_path):
  """nanoGPT's own recipe scores 1.8988 / 1.9128 (two torch seeds) on the whole validation split."""
  if not os.path.exists(SHAKESPEARE):
    pytest.skip(f"no Tiny Shakespeare text at {SHAKESPEARE}")
  summary = _run("shakespeare_char.py:nanogpt", tmp_path / "run", f"--config.data.path={SHAKESPEARE}")
  assert 1.89 <= summary["eval/loss"] <= 1.92


@pytest.mark.slow
def test_toyworld_sft_ends_its_turns_and_reports_gold_next_to_the_demonstrators(tmp_path):
  _run("toyworld_pretrain.py", tmp_path / "pretrain")
  summary = _run("toyworld_sft.py", tmp_path / "sft", f"--config.init_from={tmp_path / 'pretrain'}")
  assert summary["eval/gold/end_of_turn_rate"] >= 0.95
  for task in ("review", "list", "arithmetic", "repeat", "reverse", "all"):  # Reported side by side.
    assert 0.0 <= summary[f"eval/gold/{task}"] <= 1.0 and 0.0 < summary[f"demonstrator/{task}"] <= 1.0
