"""Jittable image augmentations used to build G_c training pairs (docs/method.md §5)."""
import jax
import jax.numpy as jnp


def gaussian_kernel1d(sigma: jax.Array, size: int = 3) -> jax.Array:
  """Normalised 1-D Gaussian taps [size] for a (traced) standard deviation."""
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  w = jnp.exp(-0.5 * (x / sigma)**2)
  return w / jnp.sum(w)


def gaussian_blur(image: jax.Array, sigma: jax.Array, size: int = 3) -> jax.Array:
  """Separable Gaussian blur of one [H, W, C] image with reflect padding.

  Matches torchvision's gaussian_blur (the reference's augmentation): a size x size kernel built
  from the 1-D taps, borders reflected (without repeating the edge pixel).
  """
  if image.ndim != 3:
    raise ValueError(f'gaussian_blur takes one [H, W, C] image, got shape {image.shape}')
  k = gaussian_kernel1d(jnp.asarray(sigma, jnp.float32), size)
  r = size // 2
  x = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode='reflect')
  h, w = image.shape[:2]
  # Rows then columns; a fixed small kernel, so explicit shifted sums beat a general conv.
  x = sum(k[i] * x[i:i + h] for i in range(size))
  return sum(k[i] * x[:, i:i + w] for i in range(size))


def add_gaussian_noise(x: jax.Array, key: jax.Array, max_sigma: float) -> jax.Array:
  """x + N(0, sigma^2) with sigma ~ U(0, max_sigma) drawn once for the whole array."""
  k_sigma, k_noise = jax.random.split(key)
  sigma = jax.random.uniform(k_sigma, (), jnp.float32) * max_sigma
  return x + sigma * jax.random.normal(k_noise, x.shape, x.dtype)
