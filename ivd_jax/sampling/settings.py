"""The sampler's settings, read from config.sample (defaults: configs/sampling.py:sample_section)."""
import dataclasses
from typing import Any

from ivd_jax import errors

SAMPLERS_UNCOND = ('ddpm', 'ddim')
# T of docs/method.md §7: DDPM runs every step, DDIM a divisor of them.
_DIFFUSION_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """Sampler, condition-edit and lifting settings (config.sample fields of the same names).

  guidance: classifier-free guidance weight w (docs/method.md §7).
  sampler_uncond, steps_uncond: G_u's sampler for view 0 and its steps.
  steps_cond: DDIM steps of G_c; eta: DDIM eta of both samplers.
  clip_denoised: clip the predicted x_0 to [-1, 1] every step.
  replace_rgb, replace_depth, constrain_depth: weights of the condition edits (§7).
  near, far: z-buffer encoding generated views are lifted to 3D with (§3, §8).
  fov_deg, ssaa, atol, rtol, erode: the aggregation of earlier views into a new camera (§4, §8).
  """
  guidance: float
  sampler_uncond: str
  steps_uncond: int
  steps_cond: int
  eta: float
  clip_denoised: bool
  replace_rgb: float
  replace_depth: float
  constrain_depth: float
  near: float
  far: float
  fov_deg: float
  ssaa: int
  atol: float
  rtol: float
  erode: int

  @classmethod
  def from_config(cls, sample_config: Any) -> 'SampleSettings':
    """The settings of a `sample` config section; every field must be present."""
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name not in sample_config:
        raise errors.ConfigError(f'sample.{f.name}', 'is missing',
                                 'build the sample section with configs/sampling.py:sample_section')
      kwargs[f.name] = f.type(sample_config[f.name])
    return cls(**kwargs)

  def validate(self) -> None:
    """Raises ConfigError (field named as config.sample.<field>) before anything compiles."""
    if self.sampler_uncond not in SAMPLERS_UNCOND:
      raise errors.ConfigError('sample.sampler_uncond', f'unknown sampler {self.sampler_uncond!r}',
                               "use 'ddpm' or 'ddim'")
    if self.sampler_uncond == 'ddpm' and self.steps_uncond != _DIFFUSION_STEPS:
      raise errors.ConfigError(
          'sample.steps_uncond', f'DDPM runs all {_DIFFUSION_STEPS} steps, got '
          f'{self.steps_uncond}', f'set --config.sample.steps_uncond={_DIFFUSION_STEPS} or use '
          '--config.sample.sampler_uncond=ddim')
    for name in ('steps_uncond', 'steps_cond'):
      steps = getattr(self, name)
      if not 1 <= steps <= _DIFFUSION_STEPS or _DIFFUSION_STEPS % steps:
        raise errors.ConfigError(f'sample.{name}', f'{steps} does not divide the '
                                 f'{_DIFFUSION_STEPS} steps',
                                 'use a divisor of 1000, e.g. 50, 100, 250 or 1000')
    if not 0.0 < self.near < self.far:
      raise errors.ConfigError('sample.near', f'near {self.near} / far {self.far} are invalid',
                               'use 0 < near < far, e.g. 0.6 and 5.0')
    if self.guidance < 0:
      raise errors.ConfigError('sample.guidance', f'{self.guidance} is negative',
                               'use w >= 0 (0 = no guidance)')
    for name in ('replace_rgb', 'replace_depth', 'constrain_depth'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise errors.ConfigError(f'sample.{name}', f'{getattr(self, name)} is not in [0, 1]',
                                 'use a weight in [0, 1] (0 disables the edit)')
