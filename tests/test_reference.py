"""Agreement with the absLRP authors' own implementation (fixtures in ``../shared/reference``).

Each fixture holds, for a timm model built with ``torch.manual_seed(0)`` and random
weights, the positive pass, the negative pass and the combined contrastive map the
authors' code produced (float64, with the two corrections that docs/semantics.md
§Departures from the reference code describes). We
rebuild the very same model, check its weights by fingerprint, explain the fixture's
input in float64 with relprop and compare per sample with the cosine similarity.

Run with ``-s`` to see the measured cosines; they are also in every assertion message.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from torch import Tensor, nn

import relprop
from relprop import rules

REFERENCE = SHARED / "reference"

#: fixture model name -> rule set the authors' code used for it
RULE_SETS: dict[str, rules.AbsLRP] = {
    "vgg16": rules.AbsLRP(maxpool_divide=False),
    "vit_tiny_patch16_224": rules.AbsLRP(),
}

PASS_MIN = 0.999
COMBINED_MIN = 0.99

pytestmark = pytest.mark.slow


def cosine_per_sample(a: Tensor, b: Tensor) -> list[float]:
    """Cosine similarity of the flattened maps, one value per sample (float64).

    Each map is first scaled by its max |value|: relprop's combined map on random
    weights is tiny (norm ~1e-8), near the norm clamp of ``F.cosine_similarity``.
    """
    a, b = (_unit_max(t.detach().double().flatten(1)) for t in (a, b))
    return torch.nn.functional.cosine_similarity(a, b, dim=1).tolist()


def _unit_max(t: Tensor) -> Tensor:
    top = t.abs().amax(1, keepdim=True)
    return t / torch.where(top > 0, top, torch.ones_like(top))


def fixture_path(name: str) -> Path:
    """Path of a fixture; skips the test when the shared folder is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(
            f"reference fixtures not found at {REFERENCE} (they live outside the repository, "
            "in the shared folder; a plain clone does not have them)"
        )
    path = REFERENCE / f"abslrp_{name}.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture {path.name} not found in {REFERENCE}")
    return path


def build_model(fixture: dict) -> nn.Module:
    """Rebuild the fixture's timm model and check its random weights by fingerprint."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(int(fixture.get("seed", 0)))
    model = timm.create_model(fixture["model"], pretrained=False).eval()
    fingerprint = torch.stack([p.double().pow(2).sum() for p in model.parameters()])
    expected = fixture["fingerprint"].double()
    ok = fingerprint.shape == expected.shape and torch.allclose(fingerprint, expected, rtol=1e-5, atol=0.0)
    if not ok:
        made_with = fixture.get("versions", {})
        pytest.fail(
            f"weight fingerprint of {fixture['model']} does not match the fixture: the fixture "
            f"was made with {made_with}, this run has torch {torch.__version__} and timm "
            f"{timm.__version__}, which build different random weights; the comparison would "
            "mean nothing (install the fixture's versions)",
            pytrace=False,
        )
    return model.double()


@pytest.fixture(scope="module", params=sorted(RULE_SETS))
def fixture_and_graph(request: pytest.FixtureRequest) -> tuple[dict, nn.Module, relprop.Graph]:
    """Load a fixture, rebuild its model in float64 and trace it with the fixture's rule set."""
    name = request.param
    fixture = torch.load(fixture_path(name))
    assert fixture["model"] == name
    model = build_model(fixture)
    return fixture, model, relprop.trace(model, rules=RULE_SETS[name])


@pytest.mark.parametrize("key", ["targets", "argmax"])
def test_matches_reference(fixture_and_graph: tuple[dict, nn.Module, relprop.Graph], key: str) -> None:
    """Both passes and the combined map agree per sample with the authors' maps."""
    fixture, model, graph = fixture_and_graph
    name = fixture["model"]
    x = fixture["x"].double()
    target = fixture[f"target_{key}"].long()
    start = time.perf_counter()
    e = graph.explanation(x, target)
    seconds = time.perf_counter() - start
    if key == "argmax":
        predicted = e.output.argmax(-1)
        assert torch.equal(predicted, target), (
            f"{name}: predicted classes {predicted.tolist()} differ from the fixture's argmax targets {target.tolist()}"
        )
    passes = e.passes[0]
    assert passes.shape == (2, *x.shape)
    cos = {
        "positive": cosine_per_sample(passes[0], fixture[f"positive_{key}"]),
        "negative": cosine_per_sample(passes[1], fixture[f"negative_{key}"]),
        "combined": cosine_per_sample(e.relevance, fixture[f"relevance_{key}"]),
    }
    report = f"{name} [{key}] cosines per sample " + ", ".join(
        "{}=[{}]".format(k, ", ".join(f"{c:.9f}" for c in v)) for k, v in cos.items()
    )
    print(f"\n{report} (explain {seconds:.1f} s)")
    for which, values in cos.items():
        bound = COMBINED_MIN if which == "combined" else PASS_MIN
        assert min(values) >= bound, f"{which} below {bound}: {report}"


def test_fingerprint_mismatch_fails_with_versions() -> None:
    """A fixture whose weights this timm/torch would not rebuild fails, naming the versions."""
    pytest.importorskip("timm")
    fake = {
        "model": "test_vit",
        "seed": 0,
        "fingerprint": torch.zeros(3),
        "versions": {"torch": "0.0-fixture", "timm": "0.0-fixture"},
    }
    with pytest.raises(pytest.fail.Exception, match="0.0-fixture"):
        build_model(fake)
