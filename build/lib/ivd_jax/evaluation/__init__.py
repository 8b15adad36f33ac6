"""The evaluation stage: scores of arrays of images and view sets (docs/method.md §10).

fid (Inception features, FID / IS / KID), reference (real-set statistics and their cache),
images (the images to score, from files or view sets), consistency (3D consistency of view sets),
truth (error against true novel views), metrics (PSNR), report (the result JSON and picture).
The `eval` mode that feeds them is ivd_jax/pipelines/eval.py.
"""
