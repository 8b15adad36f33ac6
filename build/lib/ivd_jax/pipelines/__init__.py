"""The modes (prepare, train, sample, eval, quickstart, warp_demo): where the stages meet."""
