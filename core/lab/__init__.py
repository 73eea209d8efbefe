"""The lab: experiments on how quantization changes a model's output.

- `compare`: the same generation at several precisions, the full-precision weights read from disk
  once. What it accepts is in `precisions`; the quantized transformers made in memory from the loaded
  one in `requantize`; its rows, table and JSON (memory, time, PSNR/SSIM and prompt attributes for the
  built-in models) in `compare_report`; the contact sheet and files it writes in `compare_outputs`.
- `probe`: the yardstick: a few fixed pictures drawn in full precision, redrawn with layers quantized,
  compared in pixels (any family: it runs the pipeline's own generate).
- `sensitivity`: quantize one layer (or block) at a time and rank the layers by the probe's error.
- `plans`: per-layer precision plans as JSON files that can be saved, shown, checked against a model
  and reused; `budgets`: what a plan is made under (average bits or bytes); `layer_bytes`: the layers
  a plan can name and exact byte counts; `structure`: a folder's transformer without reading weights.
- `planner`: a plan under a budget, searched on the probe from uniform bits by trading bits between
  layers and keeping only the trades that bring the pictures closer to full precision.
- `quantize_option`: what `--quantize` accepts (bits, a plan file, an `auto:` budget) turned into what
  a pipeline loads; it sits above plans and planner so that they never import each other.

No UI imports here: the CLI and the workbench drive these modules.
"""
