"""Config wiring: command-line overrides change exactly the field they name."""
from ivd_jax.configs import quickstart


def test_quickstart_checkpoint_interval_override_keeps_num_steps():
  # every_steps follows num_steps by a derived reference; before, it WAS num_steps' reference, so
  # --config.uncond.checkpoint.every_steps=500 silently cut training to 500 steps.
  config = quickstart.get_config('default')
  config.uncond.checkpoint.every_steps = 500
  assert config.uncond.train.num_steps == 1000
  config.cond.train.num_steps = 3000
  assert config.cond.checkpoint.every_steps == 3000  # still follows when not overridden
  assert config.uncond.checkpoint.every_steps == 500
