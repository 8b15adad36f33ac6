"""ivd_jax: 3D-aware image generation with 2D diffusion models, in JAX/Flax."""
