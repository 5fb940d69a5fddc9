"""Weight averaging (EMA and Lookahead): the averaged weights that a run evaluates and
serves, kept in the train state (`TrainState.average`) and saved in its checkpoints.

Every `averaging_every` steps the average moves towards the current weights, the
parameters and the BatchNorm statistics alike:

    average <- d * average + (1 - d) * weights,  d = decay * (step / total) ** power

With `power` > 0 the average follows the weights closely early in training and holds on
to its past more and more as the run goes on (airbench's schedule: decay 0.95 ** 5 every
5 steps, power 3). Lookahead (Zhang et al. 2019) also sets the weights to the average
after each update of it; EMA leaves them be. Both are functions of the step alone, so a
resumed run continues them exactly.
"""

import jax
import jax.numpy as jnp


def weights(state) -> dict:
  """What is averaged: the parameters and the BatchNorm statistics."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def update(state, mode: str, every: int, decay: float, power: float, total_steps: int):
  """The state after its step `state.step` (already counted), with the average updated
  when that step is due, and for lookahead the weights set to it."""
  step = state.step
  due = step % every == 0
  d = decay * (step / max(total_steps, 1)) ** power
  current = weights(state)
  moved = jax.tree.map(lambda a, w: a + (1 - d) * (w - a), state.average, current)
  average = jax.tree.map(lambda m, a: jnp.where(due, m, a), moved, state.average)
  if mode == "lookahead":
    current = jax.tree.map(lambda a, w: jnp.where(due, a, w), average, current)
  return state.replace(average=average, **current)
