"""Sharded training of G_u and G_c: state, sharding rules, checkpoints, loop."""
