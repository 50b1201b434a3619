"""Evaluating explanations: the paper's GAE metric and the methods it compares.

:mod:`~relprop.evaluation.metrics` (GAE, mosaics, method wrappers),
:mod:`~relprop.evaluation.methods` (the named methods of the paper's tables),
:mod:`~relprop.evaluation.comparison` (``relprop evaluate``: every method on a model and
a folder of images), :mod:`~relprop.evaluation.quantus_metrics` (Quantus' metrics on
the same maps).  Loaded on first use: ``import relprop`` does not import it.  The public
names of the first two are :mod:`relprop.metrics` and :mod:`relprop.methods`.
"""
