"""Global Attribution Evaluation (GAE), Vukadin et al. 2024 (arXiv 2412.09311), section 3.2.

GAE scores an attribution method on one positive image per group of four images:
``GAE = LC * C`` with local consistency ``LC`` (robustness ``LC_R`` and faithfulness
``LC_F`` under Most/Least-Relevant-First perturbation) and contrastiveness ``C`` (how
much of the explanation of a 2x2 mosaic lands on the positive image's quadrant rather
than on quadrants of competing classes).

By default every step computes what the authors' implementation computes
(``abslrp_gae/gae/gae.py`` of github.com/davor10105/relative-absolute-magnitude-propagation):
``benchmarks/gae_authors.py`` runs both side by side (``benchmarks/results/gae-authors.md``)
and ``tests/test_gae_oracle.py`` checks :meth:`GAE.evaluate` against an independent
per-sample implementation.  Each step is a separate, batched, pure function (dimension
0 is the batch); ``eps`` is 1e-9, added where the authors add it.

Choices (where the code and the paper's text differ, the code is followed by default):

* **Granularity** (``granularity``): ``"feature"`` (default, the code): ranking,
  zero-masking, the |x ⊙ ∇| maps, the relevance maps and their comparisons are per
  input feature (C x H x W).  ``"pixel"``: every map is summed over channels (the
  relevance map before its normalisation) and whole pixels are masked; otherwise the
  same steps.
* **Outputs** ``o_t``: the signed logit ``f_c`` of the positive image's predicted class.
* **Ranking map** (:func:`ranking_map`): ``|x ⊙ ∂L/∂x|`` with ``L = mean |f_c(x)|`` over
  the batch of positives, divided by its sum + eps per sample.
* **Steps** (:func:`perturb`): for ``p`` in ``torch.linspace(1/T, 1, T)`` (float32):
  save the input, ``o`` and the map; then, if ``p < 1``, zero the ``int(p * n)`` features
  (``n`` features per sample) that ``topk`` ranks highest (MoRF) or lowest (LeRF) in the
  current map, already-masked (zero-map) features included.  T states are saved (state 0
  unperturbed).  LeRF re-selects the masked features, so its state ``t`` has
  ``int(p_t n)`` masked (``t/T`` up to float32: at T = 10, n = 10 it is 1, 1, 2, 3, ...).
  MoRF ranks them last and masks ``int(p n)`` *more* each step: at T = 10 its states
  have 0, 10, 30, 60 % and then 100 % masked (states 4..9 are the all-zero input).  The
  paper describes t/T masked in both orders; this is what the code does.
* **Relevance maps** (:func:`normalize_map`): the method's map divided by its max
  |value| + eps, its positive part, divided by its max + eps (the authors'
  ``RelevancyMethod`` then GAE's own normalisation: ``relu(R) / max relu(R)`` up to eps).
* **LC_R**: ``d^o_t = o^LeRF_t/(o_0+eps) - o^MoRF_t/(o_0+eps)`` and ``d^A_t =
  dice(A_0, A^MoRF_t) - dice(A_0, A^LeRF_t)`` for t = 1..T-1, ``dice(a, b) = Σ|a-b| /
  (Σ|a| + Σ|b| + eps)`` (``sim = 1 - dice``); ``LC_R = 1 - 2 dice(d^A, d^o)``.
* **LC_F**: ``I_c = sign(maxnorm(l1norm(Σ_t M^LeRF_t) - l1norm(Σ_t M^MoRF_t)))`` over the
  T saved ranking maps (step 0 included); ``LC_F = Σ(I_c ⊙ A_0) / (Σ A_0 + eps)``;
  ``LC = relu(LC_R + LC_F) / 2``.  No 0/0 special cases: all-zero maps give dice 0
  (``LC_R = -1`` for a map that never changes) and overlap 0.
* **Mosaic** (:func:`mosaic`): images downsampled with ``F.interpolate(x, (H/2, W/2))``
  (mode nearest: the even rows and columns).
* **Positive image** (:func:`sample_positive`): quadrant ``i`` drawn with probability
  ``softmax_i(z[c_1..c_4])``, ``z`` the mosaic's logits and ``c_i`` the *predicted*
  classes (= ``softmax(z)[c_i] / Σ_j softmax(z)[c_j]``), in the logits' dtype, from a
  generator seeded from ``(seed, batch index)`` (:func:`batch_generator`; the authors
  use the global RNG) so that each batch's draw does not depend on the others.
* **Score map** (:func:`quadrant_scores`, :func:`score_map`): ``s`` = softmax of the
  positive image's own logits; quadrant ``i`` gets ``2 s[c_i]/s[c_p] - 1`` with ``c`` the
  *dataset labels* (``quadrant_classes="label"``, the code) or the predicted classes
  (``"predicted"``, what the paper says); ``c_p`` is the positive's own label (resp.
  prediction), so its quadrant gets 1.  With labels, a misclassified positive image has
  ``s[c_p] < max s``: scores, and ``C``, can then exceed 1 without bound (inf or nan when
  ``s[c_p]`` underflows to 0), as in the authors' code; with predictions ``S <= 1``.
  Then the 2x2 centre square (rows H/2-1 and H/2, columns W/2-1 and W/2) is set to 1:
  the code's comment speaks of the centre lines, its slice sets the intersection of
  the two centre rows and columns.
* **C** (:func:`contrastiveness`): ``relu(Σ(S ⊙ A_mos) / (Σ A_mos + eps))``, the mosaic
  explained for the positive image's predicted class.
* **Grouping** (``grouping``): ``"consecutive"`` (default): group ``g`` is images
  ``4g..4g+3`` of the batch, its mosaic holds them (quadrant ``i``: image ``4g+i``; 0
  top-left, 1 top-right, 2 bottom-left, 3 bottom-right).  ``"authors"``: the authors'
  indexing, identical at batch size 4: mosaic ``m`` holds images ``m, m+k, m+2k, m+3k``
  (``k`` = batch/4), while group ``g``'s positive is drawn with mosaic ``g``'s logits,
  mosaic ``g`` is explained for it, and quadrant ``q`` of mosaic ``m`` gets the score of
  image ``qk+m`` computed for the positive of that image's group.  For batches over 4
  the positive image is then often not in the mosaic explained for it (6 and 9 of 16 in
  ``benchmarks/results/gae-authors.md``): an indexing bug, not a reading of the paper;
  the option reproduces their numbers (their README uses batch size 16).
* **Data**: batches in the data's order (the authors' DataLoader shuffles and drops the
  last partial batch); images beyond a multiple of 4 in a batch are left out.
* **Shards**: ``GAE.evaluate(..., shard=(rank, world))`` scores only batches ``b`` with
  ``b % world == rank``; :meth:`GAEResult.merge` joins the shards' results (ordered by
  data index) into what one process gives.

The names are implemented in :mod:`relprop.evaluation.metrics`; the module loads on first use
(``import relprop`` does not import it).
"""

from .evaluation.metrics import (
    EPS,
    GAE,
    GAEResult,
    Method,
    Perturbation,
    Table,
    WilcoxonResult,
    arrange_mosaic,
    attribution_differences,
    batch_generator,
    contrastiveness,
    dice,
    downsample,
    impact_map,
    l1_normalize,
    lc_faithfulness,
    lc_robustness,
    local_consistency,
    mask_features,
    max_normalize,
    mosaic,
    normalize_map,
    output_differences,
    perturb,
    quadrant_scores,
    ranking_map,
    sample_positive,
    score_map,
)

__all__ = [
    "arrange_mosaic",
    "attribution_differences",
    "batch_generator",
    "contrastiveness",
    "dice",
    "downsample",
    "EPS",
    "GAE",
    "GAEResult",
    "impact_map",
    "l1_normalize",
    "lc_faithfulness",
    "lc_robustness",
    "local_consistency",
    "mask_features",
    "max_normalize",
    "Method",
    "mosaic",
    "normalize_map",
    "output_differences",
    "perturb",
    "Perturbation",
    "quadrant_scores",
    "ranking_map",
    "sample_positive",
    "score_map",
    "Table",
    "WilcoxonResult",
]
