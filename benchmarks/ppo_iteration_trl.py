"""TRL's side of benchmarks/ppo_iteration.py, run as its own process (see that file's docstring).

Started by ppo_iteration.py as `python ppo_iteration_trl.py SETTING_JSON`. It builds TRL's PPOTrainer on the
setting, trains, and after each iteration writes one line `@@ppo_iteration {"phases": ...}` to stdout and waits
for a line on stdin before going on: the other process runs one of our iterations in between. Only torch,
transformers and TRL are loaded here, as in a plain TRL run: TRL calls `gc.collect()` twice an iteration, and its
cost grows with everything alive in the process (next to our compiled programs it took 1.4-2.0 s instead of
0.5-0.9 s a call on the busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

# Must be set before torch loads libgomp (benchmarks/generate.py explains why).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer  # noqa: E402

from machine import ForeignLoad  # noqa: E402

MARK = "@@ppo_iteration "


def send(**message):
  print(MARK + json.dumps(message), flush=True)


def tokenizer(vocab_size: int):
  """A word-level tokenizer over the model's ids, plus pad (= vocab_size) and EOS (vocab_size + 1) outside the
  model's vocabulary: TRL takes every token equal to the pad id for padding, and no sampled token can be either."""
  vocab = {f"t{i}": i for i in range(vocab_size)}
  vocab.update({"<pad>": vocab_size, "<eos>": vocab_size + 1})
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def build_trainer(s: dict, workdir: str) -> PPOTrainer:
  """The setting `s` (ppo_iteration.py's `trl_setting()`) as a PPOTrainer: policy, reference (a copy of the
  policy), value and reward models with random weights, float32, no gradient checkpointing, no stop token."""
  m = s["model"]
  cfg = dict(vocab_size=m["vocab_size"], n_positions=m["max_len"], n_embd=m["d_model"], n_layer=m["n_layers"],
             n_head=m["n_heads"], n_inner=m["d_ff"], bos_token_id=None, eos_token_id=None, pad_token_id=None)
  torch.manual_seed(0)
  policy = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
  reference.load_state_dict(policy.state_dict())
  value = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(**cfg, num_labels=1))
  reward = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(**cfg, num_labels=1))
  args = PPOConfig(
      output_dir=workdir, report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
      bf16=False, fp16=False, gradient_checkpointing=False,
      per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1, num_mini_batches=s["minibatches"],
      local_rollout_forward_batch_size=s["batch"], total_episodes=s["batch"] * s["iterations"],
      num_ppo_epochs=s["epochs"], response_length=s["new_tokens"], temperature=s["temperature"],
      stop_token=None, stop_token_id=None, missing_eos_penalty=None, kl_coef=s["kl_coef"], kl_estimator="k1",
      whiten_rewards=False, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95, num_sample_generations=0,
      lr_scheduler_type="constant")
  dataset = datasets.Dataset.from_dict({"input_ids": s["prompts"]})
  trainer = PPOTrainer(args=args, processing_class=tokenizer(m["vocab_size"]), model=policy, ref_model=reference,
                       reward_model=reward, train_dataset=dataset, value_model=value)
  trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # Its per-iteration metric dicts.
  dtypes = {str(x.dtype) for model in (trainer.model, trainer.ref_model, trainer.reward_model)
            for x in model.parameters()}
  assert dtypes == {"torch.float32"}, f"TRL: parameters in {dtypes}, not float32"
  assert not policy.is_gradient_checkpointing, "TRL: gradient checkpointing is on"
  return trainer


def main():
  s = json.loads(sys.argv[1])
  warnings.filterwarnings("ignore")  # Deprecation notices from transformers' and TRL's own internals.
  transformers.utils.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.set_num_threads(s["threads"])
  width, vocab = s["prompt_len"] + s["new_tokens"], s["model"]["vocab_size"]

  with tempfile.TemporaryDirectory() as workdir:
    trainer = build_trainer(s, workdir)
    wrapper = trainer.model
    marks = {}
    batch_generation, forward = ppo_trainer.batch_generation, ppo_trainer.forward

    def timed_generation(*args, **kwargs):
      start = time.perf_counter()
      out = batch_generation(*args, **kwargs)
      marks["generate"] = time.perf_counter() - start
      marks["sequences"] = out[0]
      return out

    def marked_forward(model, *args, **kwargs):
      if model is wrapper and "update_start" not in marks:  # The first policy+value forward of the update.
        marks["update_start"] = time.perf_counter()
      return forward(model, *args, **kwargs)

    class Alternate(transformers.TrainerCallback):
      """Reports the iteration's phases, then waits for the other side's iteration."""

      def on_step_end(self, args, state, control, **kwargs):
        end = time.perf_counter()
        foreign = marks["load"].cores()
        sequences = marks.pop("sequences")
        assert tuple(sequences.shape) == (s["batch"], width), f"TRL generated {tuple(sequences.shape)}"
        assert int((sequences[:, s["prompt_len"]:] >= vocab).sum()) == 0, "TRL: a response holds the pad/EOS id"
        send(phases=dict(generate=marks.pop("generate"), rollout=marks["update_start"] - marks["start"],
                         update=end - marks.pop("update_start"), total=end - marks["start"], foreign=foreign))
        if sys.stdin.readline().strip() != "next":
          raise SystemExit("ppo_iteration_trl: the benchmark process went away")
        marks["load"], marks["start"] = ForeignLoad(), time.perf_counter()

    trainer.add_callback(Alternate())
    ppo_trainer.batch_generation, ppo_trainer.forward = timed_generation, marked_forward
    send(ready=dict(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__,
                    threads=torch.get_num_threads(), omp_wait_policy=os.environ["OMP_WAIT_POLICY"]))
    if sys.stdin.readline().strip() != "next":
      raise SystemExit("ppo_iteration_trl: the benchmark process went away")
    marks["load"], marks["start"] = ForeignLoad(), time.perf_counter()
    trainer.train()
  send(done=True)


if __name__ == "__main__":
  main()
