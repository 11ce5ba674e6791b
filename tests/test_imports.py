"""Imports point one way: every module of the package sits in a layer and imports only from its own layer or
the ones below, at module level and inside functions alike, and the import graph has no cycle.

The layers, bottom to top (a module not listed fails the test: place it when you add it):

  0 pure          array maths and plain data with no dependency on the rest: the losses, advantages and KL
                  control, the LoRA and int8 parameter maths, batch types, metric files, errors, the host
                  allocator's settings, the compilation cache's
  1 platform      config, mesh, tokenizer and its constrained-decoding automata and tools, data (sources, pipelines,
                  toyworld)
  2 model         the Transformer, its heads, Hugging Face and our own checkpoint format
  3 compute       sampling, rollouts, training state/steps/loop/checkpoints, the evaluators and the judge
  4 artifacts     what one stage writes and another reads: models, tokenizers, the reward model and its spec,
                  comparisons, pretraining documents
  5 stages        the stages (which never import one another, only stages.common) and the report
  6 commands      the orchestrator, the pipeline and the command-line tools

`../shared/DESIGN.md` draws "config/mesh <- model <- losses/sampling <- rl <- ...". The losses and the RL
maths sit at the bottom here instead: they are pure functions of arrays that import nothing of ours, and the
model's heads use the token log-probabilities of losses.py.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rlhf_jax")

LAYERS = {
    0: ("errors", "batches", "losses", "rl.advantages", "rl.kl_control", "train.metrics",
        "model.lora", "model.quant", "hostmem", "compile_cache"),
    1: ("config", "mesh", "tokenizer", "constrain", "tools", "data.sources", "data.pipelines", "data.toyworld",
        "data.clean"),
    2: ("model.heads", "model.transformer", "model.hf", "model.converted"),
    3: ("sampling", "rl.rollout", "rl.iteration", "train.state", "train.checkpoint", "train.steps", "train.loop",
        "eval.lm", "eval.rm", "eval.gold", "eval.policy", "eval.best_of_n",
        "eval.self_consistency", "judge"),
    4: ("artifacts.models", "artifacts.reward_model", "artifacts.comparisons", "artifacts.documents"),
    5: ("stages.common", "stages.pretrain", "stages.sft", "stages.comparisons", "stages.ai_comparisons",
        "stages.reward", "stages.ppo", "stages.dpo", "eval.report"),
    6: ("orchestrate", "pipeline", "main", "sweep", "sample", "chat", "convert", "best_of_n", "evaluate"),
}
LAYER = {name: layer for layer, names in LAYERS.items() for name in names}


def _modules() -> dict[str, str]:
  """{dotted name below rlhf_jax ("stages.ppo"; a package by its own name): path} of every module."""
  out = {}
  for directory, _, files in os.walk(ROOT):
    for file in files:
      if file.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, file), ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__") if rel != "__init__" else ""] = os.path.join(directory, file)
  return out


def _imports(path: str, modules: dict) -> set[str]:
  """The package's modules that `path` imports anywhere in it (module level or inside a function): for
  `from rlhf_jax.X import y`, the module X.y when there is one, else X."""
  inner = lambda name: name[len("rlhf_jax."):] if name.startswith("rlhf_jax.") else None
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(inner(alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      base = "" if node.module == "rlhf_jax" else inner(node.module)
      if base is None:
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}".lstrip(".")
        found.add(sub if sub in modules else base)
  return {name for name in found if name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
  packages = {"", "data", "eval", "model", "rl", "stages", "train", "artifacts"}
  unplaced = sorted(set(_modules()) - set(LAYER) - packages)
  assert not unplaced, f"modules without a layer in tests/test_imports.py: {unplaced}"


def test_imports_point_down():
  upward = [f"{module} (layer {LAYER[module]}) imports {target} (layer {LAYER[target]})"
            for module, targets in _graph().items() if module in LAYER
            for target in sorted(targets) if target in LAYER and LAYER[target] > LAYER[module]]
  assert not upward, "\n".join(upward)


def test_stages_do_not_import_each_other():
  stages = [m for m in LAYER if m.startswith("stages.") and m != "stages.common"]
  sideways = [f"{m} imports {t}" for m in stages for t in sorted(_graph()[m]) if t in stages]
  assert not sideways, "\n".join(sideways)


def test_no_import_cycle():
  graph = _graph()
  state = {}

  def visit(node, path):
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      if state.get(target) == "open":
        pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]) if target in path
                    else f"import cycle through {target}")
      if target not in state:
        visit(target, path + [target])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_the_checks_would_catch_an_upward_import(tmp_path):
  """The parser sees imports inside functions and `from package import module` forms."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from rlhf_jax.stages import ppo\n  from rlhf_jax import orchestrate\n")
  assert _imports(str(path), _modules()) == {"stages.ppo", "orchestrate"}
