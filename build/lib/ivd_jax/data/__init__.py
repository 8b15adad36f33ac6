"""Embedded scenes, dataset preparation, input pipeline, training pairs."""
