"""Evaluating a policy on fixed prompts: its samples' reward-model score, KL to the reference, gold score
(toyworld) and win rate against a baseline policy (SFT), with confidence intervals.

Every policy is sampled on the same prompts with the same random keys, so two policies' samples differ only
because the policies do. Per prompt:

  rm      the reward model's normalised score of the response (what PPO maximises, less the KL term);
  kl      sum over the response's tokens of log pi(y_t) - log pi_ref(y_t) at the sampling temperature: an
          unbiased estimate of KL(pi || pi_ref) per response, in nats;
  gold    toyworld's gold score in [0, 1];
  win     against a baseline's response to the same prompt: 1 if better, 0.5 if equal, 0 if worse, judged by
          gold or by the reward model;
  gain    gold minus the baseline's gold on the same prompt (the paired difference, `gold_gain`).

Means come with the half-width of a 95% normal confidence interval, 1.96 x standard error.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import toyworld
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.rl.rollout import make_collect
from rlhf_jax.sampling import make_generate, response_token_ids
from rlhf_jax.tokenizer import Tokenizer


def to_host(x):
  """A (possibly multi-host) global array as one numpy array on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def mean_ci(x: Sequence[float]) -> tuple[float, float]:
  """(mean, half-width of the 95% normal interval)."""
  x = np.asarray(x, np.float64)
  if len(x) < 2:
    return float(x.mean()) if len(x) else float("nan"), float("nan")
  return float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(len(x)))


def win_outcomes(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
  """Per prompt: 1 where a > b, 0.5 where equal, 0 where a < b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a > b) + 0.5 * (a == b)


@dataclasses.dataclass
class PolicySamples:
  """One policy's answers to the evaluation prompts, and their scores (numpy, one entry per prompt)."""
  texts: list[str]
  rm: np.ndarray
  kl: np.ndarray
  ended: np.ndarray
  lengths: np.ndarray
  gold: Optional[np.ndarray] = None


class PolicyEvaluator:
  """Samples `prompt_tokens` (left-padded, (N, P)) with any params of `actor` and scores the answers.

  `instances` (toyworld, one per prompt) enables gold scores. Sampling uses `sampling.temperature`,
  top_k/top_p and `max_new_tokens`, in chunks of `batch_size` prompts (the last chunk padded), key
  fold_in(PRNGKey(seed), chunk): the same for every policy evaluated. The KL to the reference compares
  the policy at that temperature with the reference at `ref_temperature` (default: the same).
  """

  def __init__(self, *, actor: Transformer, reference: Transformer, reward_model: Transformer, ref_params,
               rm_params, tokenizer: Tokenizer, mesh, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
               sampling, max_new_tokens: int, batch_size: int, seed: int, reward_token: bool,
               world: Optional[toyworld.World] = None, instances: Optional[Sequence[toyworld.Instance]] = None,
               ref_temperature: Optional[float] = None):
    self.mesh, self.tokenizer, self.batch_size, self.seed = mesh, tokenizer, batch_size, seed
    self.prompt_tokens, self.prompt_mask = prompt_tokens, prompt_mask
    self.world, self.instances = world, instances
    self.ref_params, self.rm_params = ref_params, rm_params
    self.lm = actor.clone(heads=("lm",))
    self._generate = make_generate(self.lm, max_new_tokens=max_new_tokens, temperature=sampling.temperature,
                                   top_k=sampling.top_k, top_p=sampling.top_p,
                                   stop_ids=(tokenizer.end_of_turn_id, tokenizer.eos_id), pad_id=tokenizer.pad_id)
    self._collect = make_collect(self.lm, reference, None, reward_model, temperature=sampling.temperature,
                                 end_of_turn_id=tokenizer.end_of_turn_id,
                                 reward_id=tokenizer.reward_id if reward_token else None, pad_id=tokenizer.pad_id,
                                 ref_temperature=ref_temperature)

  def sample(self, params) -> PolicySamples:
    params = {k: v for k, v in params.items() if k != "value_head"}
    n, b = len(self.prompt_tokens), self.batch_size
    rows = mesh_lib.process_batch_slice(b)
    texts, rm, kl, ended, lengths = [], [], [], [], []
    with mesh_lib.activate(self.mesh):
      for start in range(0, n, b):
        idx = np.minimum(np.arange(start, start + b), n - 1)  # The last chunk repeats its last prompt.
        batch = mesh_lib.shard_batch({"prompt": self.prompt_tokens[idx][rows],
                                      "mask": self.prompt_mask[idx][rows]}, self.mesh)
        out = self._generate(params, batch["prompt"], batch["mask"],
                             jax.random.fold_in(jax.random.PRNGKey(self.seed), start))
        rollout = self._collect(params, None, self.ref_params, self.rm_params, batch["prompt"], batch["mask"], out)
        keep = min(b, n - start)
        host = jax.tree.map(to_host, out)
        texts.extend(self.tokenizer.decode(t) for t in response_token_ids(host, keep))
        rm.append(to_host(rollout.rm_scores)[:keep])
        kl.append(to_host((rollout.log_probs - rollout.ref_log_probs).sum(-1))[:keep])
        ended.append(host.ended[:keep])
        lengths.append(host.lengths[:keep])
    result = PolicySamples(texts=texts, rm=np.concatenate(rm), kl=np.concatenate(kl), ended=np.concatenate(ended),
                           lengths=np.concatenate(lengths))
    if self.instances is not None:
      result.gold = np.asarray([toyworld.gold_score(self.world, inst, text)
                                for inst, text in zip(self.instances, texts)])
    return result

  def metrics(self, samples: PolicySamples, baseline: Optional[PolicySamples] = None, prefix: str = "eval") -> dict:
    """Means (with /ci half-widths) of the scores, per task for gold, and win rates against `baseline`."""
    out = {}
    for name, values in (("rm_score", samples.rm), ("kl", samples.kl)):
      out[f"{prefix}/{name}"], out[f"{prefix}/{name}_ci"] = mean_ci(values)
    out[f"{prefix}/end_of_turn_rate"] = float(np.mean(samples.ended))
    out[f"{prefix}/response_length"] = float(np.mean(samples.lengths))
    if samples.gold is not None:
      out[f"{prefix}/gold/all"], out[f"{prefix}/gold/all_ci"] = mean_ci(samples.gold)
      tasks = np.asarray([inst.task for inst in self.instances])
      for task in sorted(set(tasks)):
        out[f"{prefix}/gold/{task}"] = float(samples.gold[tasks == task].mean())
    if baseline is not None:
      out[f"{prefix}/win_rate_rm"], out[f"{prefix}/win_rate_rm_ci"] = mean_ci(win_outcomes(samples.rm, baseline.rm))
      if samples.gold is not None:
        wins = win_outcomes(samples.gold, baseline.gold)
        out[f"{prefix}/win_rate_gold"], out[f"{prefix}/win_rate_gold_ci"] = mean_ci(wins)
        # The paired difference: both policies answered the same prompts with the same keys, so its interval
        # is narrower than the two means' intervals suggest.
        out[f"{prefix}/gold_gain"], out[f"{prefix}/gold_gain_ci"] = mean_ci(samples.gold - baseline.gold)
    return out
