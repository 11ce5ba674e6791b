"""The device mesh, the logical-axis rule table, and moving host data onto the mesh.

One mesh with axes ('data', 'fsdp', 'tensor'), sizes from the config's `mesh` section (-1 = all remaining
devices). Parameters carry logical axis names (below); `RULES` maps them to mesh axes, so going from one
CPU to a pod is a change of mesh sizes, not of code (Flax's lm1b example and MaxText work the same way).

  batch  -> (data, fsdp)   rows of a batch are split over both data-parallel axes
  embed  -> fsdp           parameters are sharded along the model width (ZeRO-3 / FSDP)
  heads, mlp, vocab -> tensor   Megatron-style tensor parallelism
  kv, length, layers -> replicated

A dimension that a mesh axis does not divide (2 key/value heads on 4-way tensor parallelism, say) is
replicated along that axis instead of failing, so any model runs on any mesh.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
  """Resolves the configured axis sizes against the device count; errors name the mesh keys."""
  sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
  free = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(free) > 1:
    raise UserError(f"config keys {', '.join('mesh.' + a for a in free)}: at most one mesh axis may be -1")
  if any(size == 0 or size < -1 for size in sizes):
    raise UserError(f"config key mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(size for size in sizes if size != -1)
  if free:
    if num_devices % fixed:
      raise UserError(f"config key 'mesh.{free[0]}': the other axes ({fixed} devices) do not divide the "
                      f"{num_devices} available devices")
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise UserError(f"config key mesh: {dict(zip(MESH_AXES, sizes))} needs {fixed} devices, "
                    f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices=None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: linen's logical constraints act as hints; with jax's default Explicit axes they become
  # asserts and fail (NOTES-stack.md).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def single_device_mesh() -> Mesh:
  """A 1x1x1 mesh on the first device: where the command-line tools and benchmarks load one model."""
  return make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@contextlib.contextmanager
def activate(mesh: Mesh, rules=RULES):
  """Makes `mesh` and the rule table current, so linen's logical constraints take effect while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(logical_specs, shapes, mesh: Mesh, rules=RULES):
  """Logical PartitionSpecs + shapes (trees of the same structure) -> NamedShardings on `mesh`.

  A mesh axis that does not divide its dimension is dropped (that dimension is replicated along it).
  """
  def one(spec, shape):
    mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec is not None else P()
    dims = []
    for dim, axes in zip(shape.shape, tuple(mesh_spec) + (None,) * (len(shape.shape) - len(mesh_spec))):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      kept = []
      for axis in axes:
        if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
          kept.append(axis)
      dims.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return NamedSharding(mesh, P(*dims))

  return jax.tree.map(one, logical_specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Rows over the data-parallel axes, everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def stacked(sharding: NamedSharding) -> NamedSharding:
  """The sharding of N arrays stacked on a new leading axis (one per seed, `train.seeds`): that axis is not
  split, so every replica is laid out over the mesh exactly as a single run's array."""
  return NamedSharding(sharding.mesh, P(None, *sharding.spec))


def num_batch_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(batch, mesh: Mesh, seed_axis: bool = False, leading: int = 0):
  """Host-local rows (numpy) -> global arrays split over the batch axes of `mesh`.

  Every process passes only its own rows (its slice of the global batch, `process_batch_slice`); the global
  batch is their concatenation in process order. Works the same with one process. The rows are the first
  axis after `leading` unsplit ones (the K iterations of a compiled PPO call) and, with `seed_axis`, one
  more (the `train.seeds` replicas).
  """
  unsplit = leading + int(seed_axis)

  def one(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim - unsplit)
    for _ in range(unsplit):
      sharding = stacked(sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(one, batch)


def to_host(x) -> np.ndarray:
  """A (possibly multi-host) global array as one numpy array on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def process_batch_slice(global_batch_size: int) -> slice:
  """The rows of the global batch that this process reads."""
  n = jax.process_count()
  if global_batch_size % n:
    raise UserError(f"config key 'train.batch_size': {global_batch_size} is not divisible by the {n} processes")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def _multi_process_environment() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return any(int(os.environ.get(name, "1") or 1) > 1 for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))


def maybe_initialize_distributed(mesh_cfg: Any) -> bool:
  """Calls `jax.distributed.initialize` when the config or the environment says this is a multi-process run.

  Must run before anything touches a device. Every host runs the same command; on TPU VMs, SLURM and Open MPI
  the coordinator and process ids come from the environment, otherwise from `mesh.coordinator_address`,
  `mesh.num_processes` and `mesh.process_id`. Returns whether it initialised.
  """
  mode = mesh_cfg.distributed
  if mode not in ("auto", "on", "off"):
    raise UserError(f"config key 'mesh.distributed': {mode!r} is not one of auto, on, off")
  explicit = bool(mesh_cfg.coordinator_address)
  if mode == "off" or (mode == "auto" and not explicit and not _multi_process_environment()):
    return False
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=mesh_cfg.coordinator_address,
                  num_processes=mesh_cfg.num_processes or None,
                  process_id=mesh_cfg.process_id if mesh_cfg.process_id >= 0 else None)
  jax.distributed.initialize(**kwargs)
  return True
