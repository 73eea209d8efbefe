"""The lab: experiments on how quantization changes a model's output.

- `compare`: the same generation at several precisions, with memory, time, PSNR/SSIM (and prompt
  attributes for the built-in models) per precision, and a labelled contact sheet. The
  full-precision weights are read from disk once; every precision is quantized from them in memory.
- `probe`: the yardstick: a few fixed pictures drawn in full precision, redrawn with layers quantized,
  compared in pixels (any family: it runs the pipeline's own generate).
- `sensitivity`: quantize one layer (or block) at a time and rank the layers by the probe's error.
- `plans`: per-layer precision plans: budgets (average bits or bytes), exact byte counts, JSON files
  that can be saved, shown and reused, and --quantize values.
- `planner`: a plan under a budget, searched on the probe from uniform bits by trading bits between
  layers and keeping only the trades that bring the pictures closer to full precision.
- `quantize_option`: what `--quantize` accepts (bits, a plan file, an `auto:` budget) turned into what
  a pipeline loads; it sits above plans and planner so that they never import each other.

No UI imports here: the CLI and the workbench drive these modules.
"""
