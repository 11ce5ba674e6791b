"""Training state, the optimizer from config, and abstract-first sharded initialisation.

`create_train_state` never materialises an unsharded copy of the model: it traces the initialiser with
`jax.eval_shape`, turns the parameters' logical axis names into shardings on the mesh, derives the optimizer
state's shardings from the parameters' (`optax.tree_map_params`), and only then runs the initialiser under
`jit(out_shardings=...)`, so each device allocates just its own shard (MaxText's and big_vision's recipe).
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax import mesh as mesh_lib
from rlhf_jax.model import lora as lora_lib
from rlhf_jax.model.transformer import Transformer, unbox
from rlhf_jax.rl import advantages as advantages_lib


@flax.struct.dataclass
class TrainState:
  """step () int32; params a plain nested dict; opt_state optax's; rng the run's root key."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_schedule(optim: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine or linear decay to `lr * min_lr_ratio`, or constant."""
  warmup = optax.linear_schedule(0.0, optim.lr, max(optim.warmup_steps, 1))
  decay_steps = max(total_steps - optim.warmup_steps, 1)
  end = optim.lr * optim.min_lr_ratio
  decay = {
      "cosine": lambda: optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio),
      "linear": lambda: optax.linear_schedule(optim.lr, end, decay_steps),
      "constant": lambda: optax.constant_schedule(optim.lr),
  }[optim.schedule]()
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
  """True where weight decay applies: projection kernels (and embedding tables if asked); never norm scales,
  biases or the reward head's gain. Decided by name, so it also holds for scanned (stacked) layers."""
  def decays(path, _):
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    return name == "kernel" or (decay_embeddings and name == "embedding")
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with the schedule above, global-norm clipping and the decay mask. Returns (tx, schedule)."""
  schedule = make_schedule(optim, total_steps)
  parts = []
  if optim.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                           mask=lambda p: decay_mask(p, optim.decay_embeddings)))
  return optax.chain(*parts), schedule


def param_shardings(model: Transformer, mesh: Mesh, rules=mesh_lib.RULES):
  """(abstract params, their NamedShardings) for `model`, from the logical names its parameters carry."""
  boxed = jax.eval_shape(lambda rng: model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"],
                         jax.random.PRNGKey(0))
  abstract = unbox(boxed)
  return abstract, mesh_lib.logical_to_sharding(nn.get_partition_spec(boxed), abstract, mesh, rules)


def init_trainable(model: Transformer, rng: jax.Array, mesh: Mesh, rules=mesh_lib.RULES):
  """The trainable part (`lora.split`) of a LoRA model's fresh parameters, sharded: its adapters and new heads,
  initialised without allocating the frozen weights (XLA drops their unused initialisers)."""
  _, shardings = param_shardings(model, mesh, rules)
  init = jax.jit(lambda r: lora_lib.split(unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))["params"]))[1],
                 out_shardings=lora_lib.split(shardings)[1])
  with mesh_lib.activate(mesh, rules):
    return init(rng)


def init_params(model: Transformer, rng: jax.Array, mesh: Mesh, rules=mesh_lib.RULES, only=None):
  """Sharded random parameters for `model`, allocated shard by shard. Returns (params, shardings).

  `only`: the top-level names (e.g. {"reward_head"}) to return, the rest neither computed nor allocated (XLA
  drops their unused initialisers): the same values as in the whole tree, since flax keys each module's
  initialiser by its path, and a fraction of the compile (a fresh head on a loaded model)."""
  _, shardings = param_shardings(model, mesh, rules)
  if only is not None:
    shardings = {k: shardings[k] for k in only}
  init = jax.jit(lambda r: {k: v for k, v in unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))["params"]).items()
                            if k in shardings}, out_shardings=shardings)
  with mesh_lib.activate(mesh, rules):
    return init(rng), shardings


def create_train_state(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, rng: jax.Array,
                       params: Optional[Any] = None, rules=mesh_lib.RULES) -> tuple[TrainState, TrainState]:
  """A sharded TrainState and the matching tree of shardings (for the step's in/out_shardings).

  With `params` given (a pretrained model), they are placed on the mesh instead of being initialised. A
  `model` with LoRA adapters (`model.lora`) completes the given base parameters with fresh adapters, and its
  optimizer state covers only the trainable part (`lora.split`).
  """
  shardings = _state_shardings(model, tx, mesh, rules)
  with mesh_lib.activate(mesh, rules):
    if params is not None:
      params = jax.device_put(params, _matching(shardings.params, params))
    state = jax.jit(_builder(model, tx), out_shardings=shardings)(rng, params)
  return state, shardings


def create_seed_states(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, rngs_n2: jax.Array,
                       params: Optional[Any] = None, rules=mesh_lib.RULES) -> tuple[TrainState, TrainState]:
  """N TrainStates stacked on a leading seed axis (`train.seeds`), one per key of `rngs_n2`, and their
  shardings (each single-run sharding with that axis unsplit, `mesh.stacked`).

  Replica i is `create_train_state(..., rngs_n2[i], params)`: its own initialisation, or, with `params`
  given, the same pretrained parameters in every replica.
  """
  single = _state_shardings(model, tx, mesh, rules)
  shardings = jax.tree.map(mesh_lib.stacked, single)
  with mesh_lib.activate(mesh, rules):
    if params is not None:
      params = jax.device_put(params, _matching(single.params, params))
    build = jax.vmap(_builder(model, tx), in_axes=(0, None))
    state = jax.jit(build, out_shardings=shardings)(rngs_n2, params)
  return state, shardings


def stack_replicas(state: Any, shardings: Any, rngs_n2: jax.Array) -> tuple[Any, Any]:
  """N copies of a state (a PPOState from pretrained params: every replica starts from the same weights) on
  a leading seed axis, replica i with root key `rngs_n2[i]`, and their shardings (`mesh.stacked`)."""
  n = rngs_n2.shape[0]
  stacked = jax.tree.map(mesh_lib.stacked, shardings)
  build = lambda s, rngs: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), s).replace(rng=rngs)
  return jax.jit(build, out_shardings=stacked)(state, rngs_n2), stacked


def unstack_seed(shardings: TrainState):
  """`take(stacked_state, i) -> replica i's state for evaluation`: its step, parameters and RNG, laid out as
  a single run's (`shardings` are the stacked ones, from `create_seed_states` or `stack_replicas`; a
  TrainState or a PPOState), and no optimizer state --
  evaluation reads only the parameters, and the Adam moments are twice their size. Compiled once for every i.
  """
  single = jax.tree.map(lambda s: NamedSharding(s.mesh, P(*s.spec[1:])), shardings.replace(opt_state=None))
  take = jax.jit(lambda state, i: jax.tree.map(lambda x: x[i], state), out_shardings=single)
  return lambda state, i: take(state.replace(opt_state=None), jnp.asarray(i, jnp.int32))


def _state_shardings(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh, rules) -> TrainState:
  """The TrainState's shardings: the parameters' from their logical names, the optimizer state's the same."""
  abstract_params, p_shardings = param_shardings(model, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, _trained(model, abstract_params))
  replicated = mesh_lib.replicated(mesh)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, _trained(model, p_shardings),
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings, rng=replicated)


def _builder(model: Transformer, tx: optax.GradientTransformation):
  """`build(rng, params or None) -> TrainState`: fresh parameters from rng unless given, a fresh optimizer."""
  def build(rng, given):
    init_rng, root_rng = jax.random.split(rng)
    fresh = lambda: unbox(model.init(init_rng, jnp.zeros((1, 1), jnp.int32))["params"])
    p = given if given is not None else fresh()
    if given is not None and model.lora is not None:
      p = lora_lib.init_adapters(given, fresh())
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(_trained(model, p)), rng=root_rng)
  return build


def _trained(model: Transformer, params: Any) -> Any:
  """The part of `params` the optimizer updates: all of it, or with LoRA the adapters and new heads."""
  return lora_lib.split(params)[1] if model.lora is not None else params


def _matching(shardings: dict, params: dict) -> dict:
  """The entries of `shardings` for the parameters `params` has (a LoRA model's base lacks the adapters)."""
  if jax.tree.structure(shardings) == jax.tree.structure(params):
    return shardings
  return lora_lib.base(shardings)


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def param_counts(params: Any, seeds: int = 1) -> dict:
  """num_params (of one replica of `seeds`) and, for LoRA parameters, num_trainable_params: what trains."""
  counts = {"num_params": count_params(params) // seeds}
  if lora_lib.has_adapters(params):
    counts["num_trainable_params"] = count_params(lora_lib.split(params)[1]) // seeds
  return counts




@flax.struct.dataclass
class PPOState:
  """The state of a PPO run: what changes from iteration to iteration (and what a checkpoint holds).

  step () int32: iterations done. params, opt_state: dicts with "actor" and, for a separate critic,
  "critic". kl_coef () float32: the current beta. ema: an exponential moving average of the actor's params,
  or None. reward: the reward model's params (and "opt_state") when iterated rounds retrain it, else None.
  rng: the run's root key. score_moments: the running count, mean and M2 of the rollouts' scores
  (`advantages.RunningMoments`, float32 scalars) with ppo.reward_norm, else None -- so a checkpoint of a run
  without it has the same tree as before the field existed.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  kl_coef: jax.Array
  ema: Any
  reward: Any
  rng: jax.Array
  score_moments: Any = None


def create_ppo_state(models: dict, txs: dict, params: dict, mesh: Mesh, rng: jax.Array, kl_coef: float,
                     ema: bool = False, reward: Optional[Any] = None, reward_tx=None,
                     rules=mesh_lib.RULES, reward_norm: bool = False) -> tuple[PPOState, PPOState]:
  """A sharded PPOState from pretrained `params` (keyed like `models`: "actor" and maybe "critic"), with
  fresh optimizer states, and the matching tree of shardings. A model with LoRA adapters (`model.lora`) is
  given, and holds, only its trainable part (`lora.split`): its frozen base lives outside the state. `reward` (params of the reward model) is
  carried with its optimizer state `reward_tx` when the run retrains it; `reward_norm` adds empty running
  moments of the scores (replicated scalars)."""
  replicated = mesh_lib.replicated(mesh)
  p_shardings, opt_shardings, abstract = {}, {}, {}
  for name, model in models.items():
    abstract[name], p_shardings[name] = param_shardings(model, mesh, rules)
    abstract[name], p_shardings[name] = _trained(model, abstract[name]), _trained(model, p_shardings[name])
    opt_abstract = jax.eval_shape(txs[name].init, abstract[name])
    opt_shardings[name] = optax.tree_map_params(txs[name], lambda _, s: s, opt_abstract, p_shardings[name],
                                                transform_non_params=lambda _: replicated)
  reward_shardings = None
  if reward is not None:
    r_shardings = jax.tree.map(lambda x: x.sharding, reward)
    r_opt_abstract = jax.eval_shape(reward_tx.init, reward)
    reward_shardings = {"params": r_shardings, "opt_state": optax.tree_map_params(
        reward_tx, lambda _, s: s, r_opt_abstract, r_shardings, transform_non_params=lambda _: replicated)}
  moments = advantages_lib.init_running_moments() if reward_norm else None
  shardings = PPOState(step=replicated, params=p_shardings, opt_state=opt_shardings, kl_coef=replicated,
                       ema=p_shardings["actor"] if ema else None, reward=reward_shardings, rng=replicated,
                       score_moments=jax.tree.map(lambda _: replicated, moments))

  def build(given, reward_params):
    # Copies: the state is donated to the update, and must not share buffers with the frozen reference or
    # reward model that the caller keeps (they may start out as the very same arrays).
    given = jax.tree.map(jnp.copy, given)
    reward_params = jax.tree.map(jnp.copy, reward_params)
    opt = {name: txs[name].init(p) for name, p in given.items()}
    rw = None if reward_params is None else {"params": reward_params, "opt_state": reward_tx.init(reward_params)}
    ema_params = jax.tree.map(jnp.copy, given["actor"]) if ema else None
    return PPOState(step=jnp.zeros((), jnp.int32), params=given, opt_state=opt,
                    kl_coef=jnp.asarray(kl_coef, jnp.float32), ema=ema_params, reward=rw, rng=rng,
                    score_moments=advantages_lib.init_running_moments() if reward_norm else None)

  with mesh_lib.activate(mesh, rules):
    params = jax.device_put({k: params[k] for k in models}, p_shardings)
    state = jax.jit(build, out_shardings=shardings)(params, reward)
  return state, shardings
