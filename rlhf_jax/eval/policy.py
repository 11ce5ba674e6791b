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

import numpy as np

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.data import toyworld
from rlhf_jax.eval.gold import Prompt, sample_answers
from rlhf_jax.model.transformer import Transformer
from rlhf_jax.rl.rollout import make_collect
from rlhf_jax.tokenizer import Tokenizer

to_host = mesh_lib.to_host


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
  """Samples `prompts` (user turns or conversations) with any params of `actor` and scores the answers.

  Sampling is the held-out evaluations' one sampler (`eval.gold.sample_answers`, keys from `seed`, settings
  from `sampling`): the same for every policy evaluated, and a model's gold here is the figure the other
  stages report for it. `instances` (toyworld, one per prompt) enables gold scores. The KL to the reference
  compares the policy at `sampling.temperature` with the reference at `ref_temperature` (default: the same).
  """

  def __init__(self, *, actor: Transformer, reference: Transformer, reward_model: Transformer, ref_params,
               rm_params, tokenizer: Tokenizer, mesh, prompts: Sequence[Prompt], sampling, seed: int,
               reward_token: bool, world: Optional[toyworld.World] = None,
               instances: Optional[Sequence[toyworld.Instance]] = None, ref_temperature: Optional[float] = None):
    self.mesh, self.tokenizer, self.sampling, self.seed = mesh, tokenizer, sampling, seed
    self.prompts, self.world, self.instances = list(prompts), world, instances
    self.ref_params, self.rm_params = ref_params, rm_params
    self.lm = actor.clone(heads=("lm",))
    self._collect = make_collect(self.lm, reference, None, reward_model, temperature=sampling.temperature,
                                 end_of_turn_id=tokenizer.end_of_turn_id,
                                 reward_id=tokenizer.reward_id if reward_token else None, pad_id=tokenizer.pad_id,
                                 ref_temperature=ref_temperature)

  def sample(self, params) -> PolicySamples:
    params = {k: v for k, v in params.items() if k != "value_head"}
    rm, kl = [], []

    def score(batch, out, keep):
      rollout = self._collect(params, None, self.ref_params, self.rm_params, batch["prompt"], batch["mask"], out)
      rm.append(to_host(rollout.rm_scores)[:keep])
      kl.append(to_host((rollout.log_probs - rollout.ref_log_probs).sum(-1))[:keep])

    answers = sample_answers(self.lm, params, self.tokenizer, self.prompts, self.sampling, seed=self.seed,
                             mesh=self.mesh, on_batch=score)
    result = PolicySamples(texts=answers.texts, rm=np.concatenate(rm), kl=np.concatenate(kl),
                           ended=answers.ended, lengths=answers.lengths)
    if self.instances is not None:
      result.gold = np.asarray([toyworld.gold_score(self.world, inst, text)
                                for inst, text in zip(self.instances, answers.texts)])
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
