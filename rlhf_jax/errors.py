"""The one exception type for bad user input.

Anything a user can get wrong (a config key, a file, a line of JSONL, a checkpoint that does not fit the
config) raises `UserError` with a single-line message naming the key, file or line. `rlhf_jax.main` and the
other entry points print that line and exit non-zero; they never print a traceback for it.
"""


class UserError(Exception):
  """Bad input from the user: a one-line message that names the key, file or line at fault."""

  def __init__(self, message: str):
    message = " ".join(str(message).split("\n"))
    super().__init__(message)


class Preempted(Exception):
  """A signal (SIGTERM, SIGINT) asked a training run to stop; a checkpoint at `step` has been written."""

  def __init__(self, step: int, signum: int):
    import signal
    self.step, self.signum = step, signum
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. "
                     "Re-run the same command to resume.")
