"""`quantbench sensitivity` with the model's layer policy switched off, so the layers it keeps in full precision
are ranked beside the rest (how a family's policy is chosen; the policy itself is left as it is).

    .venv/bin/python benchmarks/sensitivity_all_layers.py FOLDER [quantbench sensitivity options]
e.g. --bits 4 --size 128 --steps 8 --json; the family is read from the folder's model_index.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import quantbench.core  # noqa: F401  (the fast BLAS before MLX)
from quantbench.cli.main import main as quantbench
from quantbench.core.families import family_for_folder
from quantbench.core.quant import LayerPolicy


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    folder, options = argv[0], argv[1:]
    spec = family_for_folder(Path(folder)).transformer
    object.__setattr__(spec, "policy", LayerPolicy())  # only the default size and input-size limits stay
    return quantbench(["sensitivity", "--model", folder, *options])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
