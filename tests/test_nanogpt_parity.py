"""Our pretraining step against nanoGPT's, step for step.

nanoGPT's `model.py` and `train.py` written out in PyTorch (bias-free LayerNorm and projections, exact GELU,
causal attention, tied output embedding; AdamW decaying exactly the 2-D tensors, global-norm clipping,
linear warmup then cosine decay to min_lr) start from our initial parameters and read our batches; after
every step the two losses must agree, and at the end every parameter. This is what the Shakespeare
experiment relies on when it quotes nanoGPT: a mismatch in the model, the weight-decay mask, Adam's
constants, clipping or the schedule shows up here within a few steps, long before a 2000-step run could
tell it from seed noise.

Where we differ from nanoGPT on purpose: the warmup starts at 0 (nanoGPT's `get_lr` starts at
lr / (warmup + 1)), and the character vocabulary carries the nine special ids after which the characters
come. Both are kept in the reference below so that the comparison is exact.
"""

import math
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402
from rlhf_jax import config as config_lib  # noqa: E402
from rlhf_jax.data import pipelines  # noqa: E402
from rlhf_jax.model.transformer import Transformer, TransformerConfig, unbox  # noqa: E402
from rlhf_jax.tokenizer import CharTokenizer  # noqa: E402
from rlhf_jax.train import state as state_lib  # noqa: E402
from rlhf_jax.train import steps  # noqa: E402

F = torch.nn.functional
STEPS = 40
TEXT = "".join(f"{w} shall {v} the {n}, and {n.upper()} {v}s {w}!\n"
               for w, v, n in zip(["Thou", "He", "She", "We", "They", "You"] * 60,
                                  ["see", "keep", "sing", "hold", "mark", "bear", "win"] * 60,
                                  ["crown", "field", "night", "storm", "king", "grave", "sea", "lord"] * 60))


class _LayerNorm(torch.nn.Module):
  def __init__(self, d):
    super().__init__()
    self.weight = torch.nn.Parameter(torch.ones(d))

  def forward(self, x):
    return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _Block(torch.nn.Module):
  def __init__(self, d, f, heads):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = _LayerNorm(d), _LayerNorm(d)
    self.c_attn = torch.nn.Linear(d, 3 * d, bias=False)
    self.attn_proj = torch.nn.Linear(d, d, bias=False)
    self.c_fc = torch.nn.Linear(d, f, bias=False)
    self.mlp_proj = torch.nn.Linear(f, d, bias=False)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x = x + self.attn_proj(y)
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class _NanoGPT(torch.nn.Module):
  def __init__(self, cfg: TransformerConfig):
    super().__init__()
    self.wte = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
    self.wpe = torch.nn.Embedding(cfg.max_len, cfg.d_model)
    self.h = torch.nn.ModuleList([_Block(cfg.d_model, cfg.d_ff, cfg.n_heads) for _ in range(cfg.n_layers)])
    self.ln_f = _LayerNorm(cfg.d_model)

  def forward(self, idx, targets):
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
    for block in self.h:
      x = block(x)
    logits = self.ln_f(x) @ self.wte.weight.T  # Tied: lm_head.weight is wte.weight.
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

  def load(self, params, cfg):
    """Our parameters -> nanoGPT's tensors (kernels are (in, out), torch's Linear weights (out, in))."""
    d = cfg.d_model
    t = lambda a: torch.tensor(np.asarray(a, np.float32))
    with torch.no_grad():
      self.wte.weight.copy_(t(params["embed"]["embedding"]))
      self.wpe.weight.copy_(t(params["pos_embed"]["embedding"]))
      self.ln_f.weight.copy_(t(params["final_norm"]["scale"]))
      for i, block in enumerate(self.h):
        p = params[f"layers_{i}"]
        block.ln_1.weight.copy_(t(p["attn_norm"]["scale"]))
        block.ln_2.weight.copy_(t(p["mlp_norm"]["scale"]))
        qkv = np.concatenate([np.asarray(p["attn"][n]["kernel"]).reshape(d, d) for n in "qkv"], axis=1)
        block.c_attn.weight.copy_(t(qkv.T))
        block.attn_proj.weight.copy_(t(np.asarray(p["attn"]["o"]["kernel"]).reshape(d, d).T))
        block.c_fc.weight.copy_(t(np.asarray(p["mlp"]["fc_in"]["kernel"]).T))
        block.mlp_proj.weight.copy_(t(np.asarray(p["mlp"]["fc_out"]["kernel"]).T))


def _nanogpt_lr(it, optim, total):
  """nanoGPT's get_lr with lr_decay_iters = total, except that the warmup starts at 0 (see the docstring)."""
  if it < optim.warmup_steps:
    return optim.lr * it / optim.warmup_steps
  ratio = (it - optim.warmup_steps) / (total - optim.warmup_steps)
  min_lr = optim.lr * optim.min_lr_ratio
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (optim.lr - min_lr)


def test_pretrain_steps_match_nanogpt():
  # The experiment's own optimizer settings and model family at smoke size, with enough steps to cover the
  # warmup and the whole cosine decay.
  config = config_lib.load_config(os.path.join(ROOT, "experiments", "shakespeare_char.py") + ":nanogpt,smoke")
  config_lib.apply_overrides(config, [f"train.steps={STEPS}", "optim.warmup_steps=8"])
  tokenizer = CharTokenizer.from_text(TEXT)
  config.model.vocab_size = tokenizer.vocab_size
  cfg = TransformerConfig.from_config(config.model)
  optim, train = config.optim, config.train
  assert optim.schedule == "cosine" and optim.decay_embeddings and not cfg.use_bias and cfg.activation == "gelu"
  assert cfg.position == "learned"  # nanoGPT's position table (the experiment's default is rotary).

  model = Transformer(cfg)
  params = unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 1), np.int32))["params"])
  tx, schedule = state_lib.make_optimizer(optim, train.steps)
  state = state_lib.TrainState(step=np.zeros((), np.int32), params=params, opt_state=tx.init(params),
                               rng=jax.random.PRNGKey(1))
  step = jax.jit(steps.make_lm_step(model, tx, schedule))

  torch.manual_seed(0)
  reference = _NanoGPT(cfg)
  reference.load(params, cfg)
  weights = list(reference.parameters())
  # nanoGPT's configure_optimizers: every tensor of 2 or more dimensions is decayed (embeddings included).
  optimizer = torch.optim.AdamW([{"params": [p for p in weights if p.dim() >= 2], "weight_decay": optim.weight_decay},
                                 {"params": [p for p in weights if p.dim() < 2], "weight_decay": 0.0}],
                                lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)

  tokens = np.asarray(tokenizer.encode(TEXT), np.int32)
  data = iter(pipelines.window_pipeline(tokens, train.seq_len, train.batch_size, config.seed))
  losses = []
  for it in range(train.steps):
    rows = next(data)
    state, metrics = step(state, pipelines.to_lm_batch(rows), state.rng)
    for group in optimizer.param_groups:
      group["lr"] = _nanogpt_lr(it, optim, train.steps)
    x = torch.tensor(rows["tokens"][:, :-1], dtype=torch.long)
    y = torch.tensor(rows["tokens"][:, 1:], dtype=torch.long)
    loss = reference(x, y)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(weights, optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(float(metrics["train/loss"]))
    np.testing.assert_allclose(losses[-1], loss.item(), rtol=0, atol=2e-5, err_msg=f"step {it}")
    np.testing.assert_allclose(float(metrics["train/grad_norm"]), grad_norm.item(), rtol=1e-4, err_msg=f"step {it}")
    np.testing.assert_allclose(float(metrics["train/lr"]), _nanogpt_lr(it, optim, train.steps), rtol=1e-5, atol=1e-9)
  assert losses[-1] < losses[0] - 0.3  # It learned something, so the comparison covered real updates.

  after = _NanoGPT(cfg)
  after.load(jax.device_get(state.params), cfg)
  for (name, ours), theirs in zip(after.named_parameters(), reference.parameters()):
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=0, atol=2e-5, err_msg=name)
