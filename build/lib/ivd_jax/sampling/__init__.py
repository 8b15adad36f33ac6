"""The sampling stage: 3D-consistent view sets from G_u and G_c (docs/method.md §7-8).

viewsets (cameras, keys, labels per instance), settings (config.sample), networks (checkpoints),
sampler (the compiled G_u / aggregation / G_c steps), generate (instances in batches), photo
(a real photograph as view 0), export (files of a generated view set). The `sample` mode that
puts them together is ivd_jax/pipelines/sample.py.
"""
