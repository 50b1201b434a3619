"""What is built on the library: the command line and its pictures, models shipped with it.

:mod:`~relprop.apps.cli` (the ``relprop`` command), :mod:`~relprop.apps.viz` (heatmaps),
:mod:`~relprop.apps.text` (token relevance as HTML and pictures),
:mod:`~relprop.apps.models` (loading a model from a spec, the shipped digits models),
:mod:`~relprop.apps.sentiment` (the shipped MiniLM sentiment model),
:mod:`~relprop.apps.example` (the embedded default example).  Loaded on first use:
``import relprop`` does not import it.  The public names of viz, text and models are
:mod:`relprop.viz`, :mod:`relprop.text` and :mod:`relprop.models`.
"""
