"""README tables from ``relprop evaluate`` results, laid out like the paper's GAE tables.

Vukadin et al. 2024 (arXiv 2412.09311) report LC, C and GAE per method: CNNs (VGG16,
ResNet50) in Tables 1–4, the ViT in Table 5. This prints the same layout from one or
more ``gae.json`` files written by ``relprop evaluate``, with the paper's values beside
ours where we have them (``PAPER``: only the values quoted in this project's issues; the
paper's full tables could not be read offline), and ``*`` where a method's GAE differs
from absLRP's at p < 0.05 (paired Wilcoxon signed-rank test, from the JSON)::

    python benchmarks/gae_tables.py out-vgg/gae.json out-rv/gae.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: (model family, method) -> the paper's GAE as quoted in issues 13 (ImageNet / PascalVOC)
PAPER = {
    ("cnn", "absLRP"): "0.272 / 0.238",
    ("cnn", "cLRP"): "0.12 / 0.112",
    ("cnn", "GuidedGradCAM"): "0.207 / 0.167",
    ("vit", "absLRP"): "0.075 / –",
    ("vit", "HiResCAM"): "0.047 / –",
}


def load(paths: list[Path]) -> dict[str, dict[str, dict]]:
    """model -> method -> row of ``gae.json``."""
    rows: dict[str, dict[str, dict]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["gae"]:
            rows.setdefault(row["model"], {})[row["method"]] = row
    return rows


def _cell(row: dict | None, key: str, star: bool = False) -> str:
    if row is None:
        return "–"
    text = f"{row[key]:.3f}"
    if key == "gae":
        text += f" ± {row['gae_ci95']:.3f}"
        p = row.get("p_vs_absLRP")
        if star and p is not None and p < 0.05:
            text += " *"
    return text


def table(rows: dict[str, dict[str, dict]], models: list[str], family: str) -> str:
    """One Markdown table: LC, C, GAE per model, then the paper's GAE."""
    methods = list(dict.fromkeys(m for model in models for m in rows.get(model, {})))
    head = ["method"] + [f"{model} {k}" for model in models for k in ("LC", "C", "GAE")]
    label = "paper VGG16 GAE (ImageNet / VOC)" if family == "cnn" else "paper ViT-B GAE (ImageNet / VOC)"
    lines = ["| " + " | ".join(head + [label]) + " |", "|" + "---|" * (len(head) + 1)]
    for m in methods:
        cells = [m]
        for model in models:
            row = rows.get(model, {}).get(m)
            cells += [_cell(row, "lc"), _cell(row, "c"), _cell(row, "gae", star=True)]
        cells.append(PAPER.get((family, m), ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="gae.json files of relprop evaluate")
    parser.add_argument("--cnn", default="vgg,resnet", help="models of the CNN table (default: %(default)s)")
    parser.add_argument("--vit", default="vit", help="models of the ViT table (default: %(default)s)")
    args = parser.parse_args()
    rows = load(args.results)
    cnn = [m for m in args.cnn.split(",") if m in rows]
    vit = [m for m in args.vit.split(",") if m in rows]
    if cnn:
        print(table(rows, cnn, "cnn"), end="\n\n")
    if vit:
        print(table(rows, vit, "vit"))


if __name__ == "__main__":
    main()
