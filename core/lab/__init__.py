"""The lab: experiments on how quantization changes a model's output.

- `compare`: the same generation at several precisions, with memory, time, PSNR/SSIM (and prompt
  attributes for the built-in models) per precision, and a labelled contact sheet. The
  full-precision weights are read from disk once; every precision is quantized from them in memory.
- `sensitivity`: quantize one layer (or block) at a time and measure how far the transformer's
  output moves on a few fixed inputs; rank the layers.
- `plans`: per-layer precision plans under a budget (average bits or bytes), allocated greedily from
  the sensitivity ranking; JSON files that can be saved, shown and reused.

No UI imports here: the CLI and the workbench drive these modules.
"""
