"""Batched generation: one prefill call over the prompts, then KV-cache decode loops inside jit.

Shapes: B batch, P prompt width (left-padded), N new tokens, S cache slots (<= P + N - 1), V vocabulary,
C sampling candidates (the top k, or all V).

Sampling at temperature T draws token y at step n from

  pi_T(y | x, y_<n) = softmax(z / T)_y,        z = the model's logits after the prompt x and y_<n,

optionally truncated to the k most likely tokens (top-k) and then to the nucleus (top-p: the smallest set of
most likely tokens whose probability under the top-k-renormalised distribution is >= p), renormalised.
The log-probability reported for each sampled token is log pi_T(y), without the truncation: PPO's ratio
pi_theta / pi_old must compare the same temperature-scaled policy that training recomputes from the logits
(training never sees top-k/top-p), so the rollout's log-probs are taken from that policy too, as in
lm-human-preferences and the InstructGPT setup (Ziegler et al. 2019; Ouyang et al. 2022).

A row ends at its first stop token (kept, and counted in the mask); after it the row holds `pad_id` and
log-probability 0. The decode loops run at most N steps in all and stop as soon as every row has ended.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.constrain import TokenAutomaton
from rlhf_jax.model.transformer import KVCache, Transformer, grow_cache, init_cache
from rlhf_jax.tokenizer import END_OF_TURN_ID, EOS_ID, PAD_ID
from rlhf_jax.tools import Tool


@flax.struct.dataclass
class SampleOutput:
  """tokens (B, N) int32: the new tokens, `pad_id` after a row's stop token.
  log_probs (B, N) float32: log softmax(logits / temperature) at each sampled token (no top-k/top-p), 0 after
    a row's stop token.
  mask (B, N) bool: True for generated tokens up to and including the stop token.
  lengths (B,) int32: mask.sum(-1).
  ended (B,) bool: whether the row produced a stop token.
  num_steps () int32: tokens sampled per row before the loop stopped (N, or fewer when every row ended early);
    columns from num_steps on are padding in every row.
  tool_mask (B, N) bool or None: True on the tokens a tool wrote (`tools`: its result and the close marker;
    log-prob 0, in `mask`); None when the sampler has no tool.
  """
  tokens: jax.Array
  log_probs: jax.Array
  mask: jax.Array
  lengths: jax.Array
  ended: jax.Array
  num_steps: jax.Array
  tool_mask: Optional[jax.Array] = None


@flax.struct.dataclass
class _DecodeState:
  """The decode loop's carry. `step` () is the next column of the output to fill; column step - 1 holds the
  token fed to the model at this step, written to cache slot P + step - 1."""
  step: jax.Array
  cache: KVCache
  tokens_bn: jax.Array
  log_probs_bn: jax.Array
  mask_bn: jax.Array
  ended_b: jax.Array
  automaton_b: jax.Array  # (B,) int32: each row's state in the constraint's automaton (0 without one).
  # Tool calls (all unused without a tool): where each row's open call started (-1: none), the tool's result
  # waiting to be emitted (B, Q) with its length and how much of it is out, and which columns it wrote.
  call_start_b: jax.Array
  queue_bq: jax.Array
  queue_len_b: jax.Array
  queue_pos_b: jax.Array
  tool_bn: jax.Array


def _block_size(vocab: int) -> int:
  """The block width c of the two-stage draw: the largest divisor of V up to sqrt(V), so that the (B, V)
  logits reshape to (B, V/c, c) without a copy (V=50304: c=192). When V has no divisor near sqrt(V) (a prime
  V), ceil(sqrt(V)), and the logits are padded with -inf."""
  root = math.isqrt(vocab)
  c = max(d for d in range(1, root + 1) if vocab % d == 0)
  return c if c + vocab // c <= 4 * root else root + 1


def _sample_full(logits_bv: jax.Array, rng: jax.Array, temperature: float):
  """A draw from softmax(z / T) over the whole vocabulary and its log-probability, both (B,).

  Two stages, both exact: a block of c consecutive tokens with probability proportional to its mass, then a
  token of that block from the softmax within it; P(block) P(token | block) = P(token). That takes V/c + c
  Gumbel variables per row instead of the V of `jax.random.categorical` on (B, V). The block masses also
  give the normaliser, so the logits are read twice (max, then exp-sum per block) and exponentiated once,
  and with c dividing V the blocks are a reshape, not a padded copy. At B=64, V=50304 this draw and its
  log-prob take 7.9 ms against 27.8 ms for the previous version (a padded copy, a block logsumexp and a
  separate full logsumexp for the log-prob), timed side by side on the 2-core CPU.
  """
  b, v = logits_bv.shape
  c = _block_size(v)
  z_bv = logits_bv.astype(jnp.float32)
  if v % c:
    z_bv = jnp.pad(z_bv, ((0, 0), (0, -v % c)), constant_values=-jnp.inf)
  z_bnc = z_bv.reshape(b, -1, c)
  max_b11 = jnp.max(z_bnc, axis=(1, 2), keepdims=True)
  # s = (z - max z) / T <= 0: softmax(s) = softmax(z / T), and exp(s) cannot overflow.
  mass_bn = jnp.sum(jnp.exp((z_bnc - max_b11) / temperature), axis=-1)
  log_norm_b = jnp.log(jnp.sum(mass_bn, axis=-1))
  # Gumbel-max for both stages (what `jax.random.categorical` does) from one call of the generator. On a CPU
  # each threefry call is a 5-trip while loop of small kernels: with four a step (fold_in, split, two draws)
  # they were 30% of the kernels launched by a toy-model decode step, ~3-5% of its time.
  gumbel_bk = jax.random.gumbel(rng, (b, mass_bn.shape[1] + c))
  block_b = jnp.argmax(jnp.log(mass_bn) + gumbel_bk[:, :-c], axis=-1)
  within_bc = (jnp.take_along_axis(z_bnc, block_b[:, None, None], axis=1)[:, 0] - max_b11[:, 0]) / temperature
  offset_b = jnp.argmax(within_bc + gumbel_bk[:, -c:], axis=-1)
  log_prob_b = jnp.take_along_axis(within_bc, offset_b[:, None], axis=-1)[:, 0] - log_norm_b
  return (block_b * c + offset_b).astype(jnp.int32), log_prob_b


def _draw(scaled_bv: jax.Array, rng: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Draws one token per row from softmax(scaled) truncated to the top k, then to the nucleus; (B,) int32.

  With the candidates sorted by decreasing logit z_(1) >= z_(2) >= ... (the top k, or the whole vocabulary)
  and q = softmax over them, the nucleus keeps z_(j) while sum_{i<j} q_(i) < p: the smallest prefix whose
  probability is >= p, and always z_(1). The draw is made among the C candidates only, so top-k sampling
  costs C rather than V random numbers per row.
  """
  vocab = scaled_bv.shape[-1]
  k = top_k if 0 < top_k < vocab else 0
  if k:
    sorted_bc, ids_bc = jax.lax.top_k(scaled_bv, k)
  else:
    ids_bc = jnp.argsort(-scaled_bv, axis=-1)
    sorted_bc = jnp.take_along_axis(scaled_bv, ids_bc, axis=-1)
  if top_p < 1.0:
    probs_bc = jax.nn.softmax(sorted_bc, axis=-1)
    mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
    sorted_bc = jnp.where(mass_before_bc < top_p, sorted_bc, -jnp.inf)
  pick_b = jax.random.categorical(rng, sorted_bc, axis=-1)
  return jnp.take_along_axis(ids_bc, pick_b[:, None], axis=-1)[:, 0]


def _sample(logits_bv: jax.Array, rng: jax.Array, *, temperature: float, top_k: int, top_p: float,
            greedy: bool):
  """One token per row and its log-probability log softmax(logits / T)_token, both (B,)."""
  if not greedy and not 0 < top_k < logits_bv.shape[-1] and top_p >= 1.0:  # No truncation.
    return _sample_full(logits_bv, rng, temperature)
  scaled_bv = logits_bv.astype(jnp.float32) / temperature
  token_b = jnp.argmax(scaled_bv, axis=-1) if greedy else _draw(scaled_bv, rng, top_k, top_p)
  token_b = token_b.astype(jnp.int32)
  picked_b = jnp.take_along_axis(scaled_bv, token_b[:, None], axis=-1)[:, 0]
  return token_b, picked_b - jax.nn.logsumexp(scaled_bv, axis=-1)


def _phase_ends(max_new_tokens: int, phase_steps: int = 16, max_phases: int = 8) -> list[int]:
  """Where the decode loops end (exclusive step numbers; steps run 1 .. N-1, step 0 samples from the prefill):
  ceil((N - 1) / phase_steps) loops of equal length, at most `max_phases`.

  Attention reads every slot of the cache at every step, and on a CPU those reads are bound by memory
  bandwidth (GPT-2 small at B=64: 4.7 MB a slot over the 12 layers). One loop over a cache of P + N - 1
  slots reads mostly empty slots early on; a loop per phase, each over a cache just long enough for it
  (`grow_cache` between them, one copy each), reads only the filled slots plus half a phase on average.
  GPT-2 small, B=64, P=16, timed side by side on the busy 2-core CPU: N=128 ran 1.10x faster with 4 loops
  than with one and 1.16x faster again with 8; N=32 1.11x faster with 2 loops than with one. Each loop is
  one more copy of the decode step to compile (N=128: ~1.3-1.6x the compile time with 8 loops).
  """
  steps = max_new_tokens - 1
  phases = max(1, min(max_phases, -(-steps // phase_steps)))
  size = -(-steps // phases) if steps else 0
  return [min(max_new_tokens, 1 + size * (i + 1)) for i in range(phases)]


def _keys_per_row(rng: jax.Array, batch: int) -> bool:
  """Whether `rng` holds one key per row of a batch of `batch` (else it is one key); raises when neither."""
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  one = 0 if typed else 1
  if rng.ndim == one:
    return False
  if rng.ndim == one + 1 and rng.shape[0] == batch:
    return True
  raise ValueError(f"rng must be one key or one key per row ({batch} rows), got an array of shape {rng.shape}")


def make_generate(model: Transformer, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, greedy: bool = False, stop_ids: Sequence[int] = (END_OF_TURN_ID, EOS_ID),
                  pad_id: int = PAD_ID, constraint: Optional[TokenAutomaton] = None, tool: Optional[Tool] = None):
  """A jitted `(params, prompt_bp, prompt_mask_bp, rng) -> SampleOutput`; it compiles once per prompt shape.

  `prompt_bp` (B, P) int32 holds left-padded prompts, `prompt_mask_bp` (B, P) bool is False on the padding,
  and every row needs at least one real token. Token j of a row whose first real token sits at column c
  gets position j - c and segment id 1 (padding: segment 0, invisible to every query). Step n uses the key
  fold_in(rng, n); `greedy` takes the arg-max and ignores rng, top_k and top_p. The KV cache is in the
  model's compute dtype.

  `rng` is one key for the batch, or one key per row ((B, 2) raw or (B,) typed keys): then row b draws step n
  from fold_in(rng[b], n) exactly as a batch of that row alone would, so its answer does not depend on which
  rows share its batch (what the held-out evaluations need: `eval.gold.sample_answers`).

  `constraint`: every row's answer matches the automaton (`constrain`). `tool`: a row that writes the tool's
  call marker, an input and the result marker gets the tool's result and close marker as its next tokens,
  forced one per step (`tools`; SampleOutput.tool_mask). The two cannot be combined.
  """
  if "lm" not in model.heads:
    raise ValueError(f"generation needs the model's 'lm' head; it has {model.heads}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature <= 0.0:
    raise ValueError(f"temperature must be > 0 (use greedy=True for the arg-max), got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}")
  sample = functools.partial(_sample, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
  stop_ids_array = np.asarray(stop_ids, np.int32).reshape(-1)
  if constraint is not None and tool is not None:
    raise ValueError("a constraint and a tool cannot be combined: the tool's result would not follow the automaton")
  q = 1 if tool is None else tool.max_result_tokens
  if constraint is not None:
    vocab = model.config.vocab_size
    if constraint.next_state.shape[1] > vocab:
      raise ValueError(f"the constraint's tokenizer has {constraint.next_state.shape[1]} ids, more than the "
                       f"model's vocabulary of {vocab}")
    if constraint.min_tokens > max_new_tokens:
      raise ValueError(f"the constraint {constraint.pattern!r} needs at least {constraint.min_tokens} tokens, "
                       f"more than max_new_tokens={max_new_tokens}")
    next_sv, cost_sv = constraint.step_tables([int(i) for i in stop_ids_array])
    pad_cols = vocab - next_sv.shape[1]  # A vocabulary padded past the tokenizer's ids: never allowed.
    next_sv = np.pad(next_sv, ((0, 0), (0, pad_cols)))
    cost_sv = np.pad(cost_sv, ((0, 0), (0, pad_cols)), constant_values=np.iinfo(np.int32).max)

  def prefill(module: Transformer, prompt_bp, positions_bp, segments_bp, cache):
    # Only the last position's logits are needed; the full (B, P, V) logits of the call are dead code that
    # XLA removes.
    out = module(prompt_bp, positions_bp, segments_bp, cache=cache)
    return module.lm_logits(out.hidden[:, -1:])[:, 0], out.cache

  def run(params, prompt_bp, prompt_mask_bp, rng) -> SampleOutput:
    if prompt_bp.shape != prompt_mask_bp.shape:
      raise ValueError(f"prompt {prompt_bp.shape} and prompt mask {prompt_mask_bp.shape} differ in shape")
    variables = {"params": params}
    if constraint is not None:  # One constant each, shared by the prefill's draw and every decode loop.
      next_table, cost_table = jnp.asarray(next_sv), jnp.asarray(cost_sv)
    b, p = prompt_bp.shape
    prompt_mask_bp = prompt_mask_bp.astype(bool)
    prompt_len_b = jnp.sum(prompt_mask_bp, axis=-1, dtype=jnp.int32)
    # fold_in(rng, n) for every step at once, outside the loops (one generator call instead of one a step).
    fold = lambda key: jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(max_new_tokens))
    if _keys_per_row(rng, b):  # (B, N, ...) keys: each row is drawn as a batch of one.
      step_keys = jax.vmap(fold)(rng)
      draw = lambda logits_bv, step: jax.tree.map(lambda x: x[:, 0], jax.vmap(
          lambda logits_v, keys_n: sample(logits_v[None], keys_n[step]))(logits_bv, step_keys))
    else:
      step_keys = fold(rng)
      draw = lambda logits_bv, step: sample(logits_bv, step_keys[step])

    def emit(state: _DecodeState, logits_bv) -> _DecodeState:
      """Samples column `step` from the logits after column step - 1, masking rows that have ended."""
      automaton_b = state.automaton_b
      if constraint is None:
        token_b, log_prob_b = draw(logits_bv, state.step)
      else:  # Columns left after this one: max_new_tokens - 1 - step.
        allowed_bv = cost_table[automaton_b] <= max_new_tokens - 1 - state.step
        token_b, _ = draw(jnp.where(allowed_bv, logits_bv, -jnp.inf), state.step)
        scaled_bv = logits_bv.astype(jnp.float32) / temperature
        log_prob_b = (jnp.take_along_axis(scaled_bv, token_b[:, None], axis=-1)[:, 0]
                      - jax.nn.logsumexp(scaled_bv, axis=-1))
        automaton_b = jnp.where(state.ended_b, automaton_b, next_table[automaton_b, token_b])
      live_b = ~state.ended_b
      put = lambda x_bn, x_b: jax.lax.dynamic_update_slice_in_dim(x_bn, x_b[:, None], state.step, axis=1)
      tool_fields = {}
      if tool is not None:
        token_b, log_prob_b, tool_fields = call_tool(state, token_b, log_prob_b, live_b, put)
      token_b = jnp.where(live_b, token_b, pad_id)
      log_prob_b = jnp.where(live_b, log_prob_b, 0.0)
      stopped_b = live_b & jnp.any(token_b[:, None] == stop_ids_array, axis=-1)
      return state.replace(step=state.step + 1, tokens_bn=put(state.tokens_bn, token_b),
                           log_probs_bn=put(state.log_probs_bn, log_prob_b), mask_bn=put(state.mask_bn, live_b),
                           ended_b=state.ended_b | stopped_b, automaton_b=automaton_b, **tool_fields)

    def call_tool(state: _DecodeState, token_b, log_prob_b, live_b, put):
      """A row with a result waiting emits its next token instead of the drawn one (log-prob 0); a row that
      writes the result marker inside an open call gets the tool's output queued. `put` writes column step."""
      forced_b = live_b & (state.queue_pos_b < state.queue_len_b)
      queued_b = jnp.take_along_axis(state.queue_bq, jnp.minimum(state.queue_pos_b, q - 1)[:, None], axis=1)[:, 0]
      token_b = jnp.where(forced_b, queued_b, token_b)
      log_prob_b = jnp.where(forced_b, 0.0, log_prob_b)
      own_b = live_b & ~forced_b
      opens_b = own_b & (token_b == tool.call_id) & (state.call_start_b < 0)
      calls_b = own_b & (token_b == tool.result_id) & (state.call_start_b >= 0)
      columns_n = jnp.arange(max_new_tokens)
      input_bn = (columns_n > state.call_start_b[:, None]) & (columns_n < state.step) & calls_b[:, None]
      empty = (jnp.zeros((b, q), jnp.int32), jnp.zeros((b,), jnp.int32))
      result_bq, length_b = jax.lax.cond(jnp.any(calls_b), lambda: tool.run(state.tokens_bn, input_bn, calls_b),
                                         lambda: empty)
      fields = dict(
          call_start_b=jnp.where(opens_b, state.step, jnp.where(calls_b, -1, state.call_start_b)),
          queue_bq=jnp.where(calls_b[:, None], result_bq, state.queue_bq),
          queue_len_b=jnp.where(calls_b, length_b, state.queue_len_b),
          queue_pos_b=jnp.where(calls_b, 0, state.queue_pos_b + forced_b),
          tool_bn=put(state.tool_bn, forced_b))
      return token_b, log_prob_b, fields

    # The prefill fills a cache of exactly P slots (so XLA writes it once, without zeroing it first). Step n
    # (1 <= n < N) writes slot P + n - 1, so a loop that ends before step `end` needs P + end - 1 slots.
    cache = init_cache(model.config, b, p)
    positions_bp = jnp.maximum(jnp.cumsum(prompt_mask_bp, axis=-1, dtype=jnp.int32) - 1, 0)
    logits_bv, cache = model.apply(variables, prompt_bp, positions_bp, prompt_mask_bp.astype(jnp.int32), cache,
                                   method=prefill)
    state = emit(_DecodeState(step=jnp.zeros((), jnp.int32), cache=cache,
                              tokens_bn=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                              log_probs_bn=jnp.zeros((b, max_new_tokens), jnp.float32),
                              mask_bn=jnp.zeros((b, max_new_tokens), bool), ended_b=jnp.zeros((b,), bool),
                              automaton_b=jnp.full((b,), 0 if constraint is None else constraint.start,
                                                   jnp.int32),
                              call_start_b=jnp.full((b,), -1, jnp.int32), queue_bq=jnp.zeros((b, q), jnp.int32),
                              queue_len_b=jnp.zeros((b,), jnp.int32), queue_pos_b=jnp.zeros((b,), jnp.int32),
                              tool_bn=jnp.zeros((b, max_new_tokens), bool)),
                 logits_bv)
    segments_b1 = jnp.ones((b, 1), jnp.int32)

    def decode(state: _DecodeState) -> _DecodeState:
      token_b1 = jax.lax.dynamic_slice_in_dim(state.tokens_bn, state.step - 1, 1, axis=1)
      positions_b1 = (prompt_len_b + state.step - 1)[:, None]
      out = model.apply(variables, token_b1, positions_b1, segments_b1, cache=state.cache)
      return emit(state.replace(cache=out.cache), out.logits[:, 0])

    for end in _phase_ends(max_new_tokens):
      state = state.replace(cache=grow_cache(state.cache, p + end - 1))
      state = jax.lax.while_loop(lambda s, end=end: (s.step < end) & ~jnp.all(s.ended_b), decode, state)
    return SampleOutput(tokens=state.tokens_bn, log_probs=state.log_probs_bn, mask=state.mask_bn,
                        lengths=jnp.sum(state.mask_bn, axis=-1, dtype=jnp.int32), ended=state.ended_b,
                        num_steps=state.step, tool_mask=None if tool is None else state.tool_bn)

  return jax.jit(run)


_cached_generate = functools.lru_cache(maxsize=64)(make_generate)


def generate(model: Transformer, params, prompt_bp, prompt_mask_bp, rng: jax.Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids: Sequence[int] = (END_OF_TURN_ID, EOS_ID), pad_id: int = PAD_ID,
             constraint: Optional[TokenAutomaton] = None, tool: Optional[Tool] = None) -> SampleOutput:
  """Samples up to `max_new_tokens` per left-padded prompt; see `make_generate` for the arguments.

  The jitted function is built once per (model, settings, constraint, tool) and compiled once per prompt shape.
  """
  run = _cached_generate(model, max_new_tokens=max_new_tokens, temperature=float(temperature),
                         top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy),
                         stop_ids=tuple(int(i) for i in stop_ids), pad_id=int(pad_id), constraint=constraint,
                         tool=tool)
  return run(params, prompt_bp, prompt_mask_bp, rng)


def prompt_batch(token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
  """Left-pads lists of ids to `length` (default: the longest) -> (prompt_bp int32, mask_bp bool) numpy.

  Fixed bucket widths keep `generate` to one compile per bucket. Raises ValueError for an empty prompt or one
  longer than `length`.
  """
  width = max((len(ids) for ids in token_lists), default=0) if length is None else length
  prompt_bp = np.full((len(token_lists), width), pad_id, np.int32)
  mask_bp = np.zeros((len(token_lists), width), bool)
  for i, ids in enumerate(token_lists):
    if not len(ids):
      raise ValueError(f"prompt {i} is empty: generation needs at least one token to condition on")
    if len(ids) > width:
      raise ValueError(f"prompt {i} has {len(ids)} tokens, more than the bucket width {width}")
    prompt_bp[i, width - len(ids):] = ids
    mask_bp[i, width - len(ids):] = True
  return prompt_bp, mask_bp


def response_token_ids(out: SampleOutput, num_rows: int | None = None) -> list[np.ndarray]:
  """Each row's generated tokens as a host array, without padding and without the stop token that ended it
  (what a tokenizer should decode as the response). Only the first `num_rows` rows when given."""
  out = jax.device_get(out)
  rows = range(len(out.tokens) if num_rows is None else num_rows)
  return [out.tokens[r][out.mask[r]][:-1] if out.ended[r] else out.tokens[r][out.mask[r]] for r in rows]

