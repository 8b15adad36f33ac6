"""Cameras, depth encodings, the splat warp and multi-view aggregation."""
