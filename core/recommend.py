"""What a machine can run: per model, the best precision that fits, its predicted peak, quality and warnings.

The rules, all stated here:

Budgets: core/budget.py (comfortable, tight, minimum).

Plans
    For each precision of the model's sensible list (best first) and each text-encoder precision
    (full, then 8-bit; never for a model whose encoder must stay in full precision), the memory
    measures are tried from the least to the most intrusive: everything resident and a whole VAE
    decode; the text encoder freed after encoding; the text encoder loaded alone; a tiled decode
    (512, then 256 px). The first plan that fits comfortably is the recommendation.

Quality (the cliff)
    bf16 and 8-bit are indistinguishable in use; 6-bit is good; 5-bit is fair; at 4 bits and below
    a large model (>= 10B transformer parameters) degrades sharply (smeared textures, painterly
    skies), so a small model at full precision beats it. The overall pick ranks models by quality
    tier first, then by size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .budget import (COMFORTABLE_FRACTION, MAX_RAM_GB, MIN_RAM_GB, Budget, budget_for,  # noqa: F401 (callers' names)
                     budget_from_gb, budget_from_hardware, check_ram_gb)
from .catalog import CatalogEntry, Precision, all_entries, get_entry, precision_label
from .errors import InvalidRequest
from .memory_model import GiB, Plan, Prediction, architecture, default_dtype, predict

# Unified-memory sizes Apple sells (GB, i.e. GiB), used to state "needs N GB".
MAC_RAM_TIERS = (8, 16, 18, 24, 32, 36, 48, 64, 96, 128, 192, 256, 512)
LARGE_MODEL_PARAMS = 10e9
# The measures, least intrusive first: (text encoder mode, tile size or None).
MEASURES = (("resident", None), ("evict", None), ("staged", None), ("resident", 512), ("evict", 512),
            ("staged", 512), ("staged", 256))
# What quantbench's engine can do (core/families/flux2/pipeline.py, MemoryOptions): all of the above. "TE alone"
# is `generate`'s default (the transformer loads after the prompt is encoded), tiles are --vae-tile.
ENGINE_MEASURES = MEASURES



# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quality:
    tier: int  # 3 excellent, 2 good, 1 visible loss, 0 past the cliff
    label: str
    note: str

    def to_dict(self) -> dict:
        return {"tier": self.tier, "label": self.label, "note": self.note}


def transformer_params(entry: CatalogEntry) -> int:
    return architecture(entry.transformer).params if entry.transformer else 0


def expected_quality(entry: CatalogEntry, bits: Precision) -> Quality:
    large = transformer_params(entry) >= LARGE_MODEL_PARAMS
    if bits is None:
        return Quality(3, "reference", "full precision")
    if bits >= 8:
        return Quality(3, "near-lossless", "8-bit: indistinguishable in use")
    if bits >= 6:
        return Quality(2, "good", "6-bit: slight loss, usually invisible")
    if bits == 5:
        return Quality(1, "fair", "5-bit: fine detail softens")
    if large:
        return Quality(0, "past the cliff", f"{bits}-bit on a large model: smeared textures, painterly artifacts")
    return Quality(1, "visible loss", f"{bits}-bit: composition kept, fine detail and colour drift")


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------

def candidate_plans(entry: CatalogEntry, bits: Precision, width: int, height: int,
                    backend: str = "metal", dtype: str | None = None,
                    measures: tuple[tuple[str, int | None], ...] = MEASURES, ranks: int = 1) -> list[Plan]:
    """Plans for one transformer precision, least intrusive first (dtype: the engine's default for the backend);
    ranks > 1: the transformer split across that many machines (what one of them holds)."""
    dtype = dtype or default_dtype(backend)
    te_choices: tuple[Precision, ...] = (None, 8) if all(c.quantizable for c in entry.text_encoders) else (None,)
    plans = []
    for te_bits in te_choices:
        for mode, tile in measures:
            plans.append(Plan(transformer_bits=bits, text_encoder_bits=te_bits, width=width, height=height,
                              text_encoder=mode, vae_tiling=tile is not None, tile_size=tile or 512,
                              backend=backend, dtype=dtype, ranks=ranks))
    return plans


def _smallest_plan(entry: CatalogEntry, bits: Precision, width: int, height: int, backend: str,
                   dtype: str, ranks: int = 1) -> tuple[Plan, Prediction]:
    best = None
    for plan in candidate_plans(entry, bits, width, height, backend, dtype, ranks=ranks):
        prediction = predict(entry, plan)
        if best is None or prediction.generation_peak < best[1].generation_peak:
            best = (plan, prediction)
    return best


def minimum_ram_gb(entry: CatalogEntry, plan: Plan, tiers: tuple[int, ...] = MAC_RAM_TIERS,
                   comfortable: bool = False, include_load: bool = True) -> int | None:
    """The smallest machine (GB of unified memory) on which `plan` runs (loading included unless told).

    comfortable=False is the bare minimum (peak <= RAM - 0.75 GB), the benchmark seed's notion.
    """
    prediction = predict(entry, plan)
    peak = prediction.peak if include_load else prediction.generation_peak
    for gb in tiers:
        b = budget_for(gb * GiB)
        if peak <= (b.comfortable if comfortable else b.minimum):
            return gb
    return None


# ---------------------------------------------------------------------------------------------
# Advice
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelAdvice:
    entry: CatalogEntry
    status: str  # "fits", "tight", "too big", "not shipped"
    plan: Plan | None = None
    prediction: Prediction | None = None
    quality: Quality | None = None
    stretch: tuple[Plan, Prediction] | None = None  # a better precision that only fits tight
    needs_gb: int | None = None  # smallest Mac that runs the lowest sensible precision comfortably
    warnings: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        return precision_label(self.plan.transformer_bits, self.plan.dtype) if self.plan else "-"

    def generate_arguments(self) -> list[str] | None:
        """`quantbench generate`'s arguments that run this plan (None without one, or for a model quantbench
        has no engine for). The text encoder needs no option: generate loads it alone by default, the least
        memory of the modes."""
        if self.plan is None or not self.entry.runnable:
            return None
        plan = self.plan
        args = ["--model", self.entry.id]
        if plan.transformer_bits is not None:
            args += ["-q", str(plan.transformer_bits)]
        if plan.text_encoder_bits is not None:
            args += ["--text-encoder-quantize", str(plan.text_encoder_bits)]
        if plan.vae_tiling:
            args += ["--vae-tile", str(plan.tile_size)]
        if (plan.width, plan.height) != tuple(self.entry.default_size):
            args += ["--width", str(plan.width), "--height", str(plan.height)]
        return args

    def to_dict(self) -> dict:
        d = {"model": self.entry.id, "name": self.entry.name, "status": self.status,
             "runnable": self.entry.runnable, "precision": self.precision if self.plan else None,
             "plan": self.plan.to_dict() if self.plan else None,
             "measures": self.plan.describe() if self.plan else None,
             "peak_bytes": self.prediction.generation_peak if self.prediction else None,
             "load_peak_bytes": self.prediction.load_peak if self.prediction else None,
             "prequantized_load_bytes": self.prediction.load_peaks["prequantized"] if self.prediction else None,
             "bottleneck": self.prediction.bottleneck if self.prediction else None,
             "quality": self.quality.to_dict() if self.quality else None,
             "needs_gb": self.needs_gb, "engine_ready": engine_ready(self), "gated": self.entry.gated,
             "licence": self.entry.licence, "warnings": list(self.warnings),
             "generate_arguments": self.generate_arguments()}
        if self.stretch:
            plan, prediction = self.stretch
            d["stretch"] = {"precision": precision_label(plan.transformer_bits, plan.dtype), "measures": plan.describe(),
                            "peak_bytes": prediction.generation_peak}
        return d


@dataclass
class Recommendation:
    budget: Budget
    width: int
    height: int
    backend: str
    advice: list[ModelAdvice]
    best_runnable: str | None = None
    best_overall: str | None = None
    today: ModelAdvice | None = None  # the best runnable model with the engine as it is (no memory measures)
    notes: list[str] = field(default_factory=list)
    prompt_note: str | None = None  # the models whose peaks count their longest prompt, a bound (prompt_bound_note)

    def get(self, model_id: str) -> ModelAdvice:
        return next(a for a in self.advice if a.entry.id == model_id)

    def to_dict(self) -> dict:
        return {"budget": self.budget.to_dict(), "width": self.width, "height": self.height,
                "backend": self.backend, "best_runnable": self.best_runnable, "best_overall": self.best_overall,
                "today": self.today.to_dict() if self.today else None,
                "models": [a.to_dict() for a in self.advice], "notes": list(self.notes)}


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GB"


def advise(entry: CatalogEntry, budget: Budget, width: int | None = None, height: int | None = None,
           backend: str = "metal", dtype: str | None = None,
           measures: tuple[tuple[str, int | None], ...] = MEASURES, ranks: int = 1) -> ModelAdvice:
    """The best precision and plan for one model on a machine with `budget` (trying only `measures`); with
    ranks > 1, on each of `ranks` machines of that budget with the transformer split across them."""
    if not entry.shipped or not entry.components:
        return ModelAdvice(entry, "not shipped", warnings=["not yet shipped"])
    width, height = width or entry.default_size[0], height or entry.default_size[1]
    tight: tuple[Plan, Prediction] | None = None
    for bits in entry.precisions:
        for plan in candidate_plans(entry, bits, width, height, backend, dtype, measures, ranks):
            prediction = predict(entry, plan)
            if prediction.generation_peak <= budget.comfortable:
                advice = ModelAdvice(entry, "fits", plan, prediction, expected_quality(entry, bits))
                if tight and tight[0].transformer_bits != bits:
                    advice.stretch = tight
                _warn(advice, budget)
                return advice
            # A tight fit runs with other apps closed: loading must fit too.
            if tight is None and prediction.peak <= budget.tight:
                tight = (plan, prediction)
    lowest = entry.precisions[-1]
    if tight is not None:
        plan, prediction = tight
        advice = ModelAdvice(entry, "tight", plan, prediction, expected_quality(entry, plan.transformer_bits))
    else:
        plan, prediction = _smallest_plan(entry, lowest, width, height, backend, dtype, ranks)
        advice = ModelAdvice(entry, "too big", None, prediction, None)
    advice.needs_gb = minimum_ram_gb(entry, _smallest_plan(entry, lowest, width, height, backend, dtype, ranks)[0],
                                     comfortable=True, include_load=False)
    _warn(advice, budget)
    return advice


def engine_ready(advice: ModelAdvice) -> bool:
    """Whether quantbench's engine can run the advised plan today."""
    plan = advice.plan
    return (advice.entry.runnable and plan is not None
            and (plan.text_encoder, plan.tile_size if plan.vae_tiling else None) in ENGINE_MEASURES)


def _warn(advice: ModelAdvice, budget: Budget) -> None:
    entry, plan, prediction, w = advice.entry, advice.plan, advice.prediction, advice.warnings
    if advice.status == "too big":
        lowest = precision_label(entry.precisions[-1])
        if prediction.generation_peak > budget.tight:
            w.append(f"does not fit: even {lowest} with every memory measure needs {_gib(prediction.generation_peak)}, "
                     f"more than the {_gib(budget.tight)} usable here ({budget.tight_rule})")
        else:
            w.append(f"does not fit: {lowest} would run in {_gib(prediction.generation_peak)}, but loading it from "
                     f"its bf16 checkpoint needs {_gib(prediction.load_peak)}")
        return
    if advice.status == "tight":
        w.append(f"tight: above the comfortable {_gib(budget.comfortable)}; close other apps, or it will swap")
    if advice.stretch:
        splan, spred = advice.stretch
        w.append(f"{precision_label(splan.transformer_bits, splan.dtype)} also fits with other apps closed "
                 f"(peak {_gib(spred.generation_peak)})")
    if advice.quality and advice.quality.tier == 0:
        w.append(f"{precision_label(plan.transformer_bits, plan.dtype)} is past the quality cliff for a "
                 f"{transformer_params(entry) / 1e9:.0f}B model: a small model at full precision looks better")
    loading, pre = prediction.load_peak, prediction.load_peaks["prequantized"]
    if loading > pre:
        if loading > budget.minimum:
            w.append(f"loading from the bf16 checkpoint peaks at {_gib(loading)}, more than the machine has: use a pre-quantized "
                     f"copy ({_gib(pre)}, quantbench save)")
        elif loading > budget.comfortable:
            w.append(f"loading from the bf16 checkpoint briefly takes {_gib(loading)}: close other apps while it loads, or use a "
                     f"pre-quantized copy ({_gib(pre)}, quantbench save)")


def runs_prompts_at_their_length(entry: CatalogEntry) -> bool:
    """Whether the model's family runs each prompt at its own length (its memory then depends on the prompt)."""
    from .families import family_named
    return (entry.transformer is not None
            and family_named(entry.transformer.family).pipeline.runs_prompts_at_their_length())


def prompt_bound_note(advice: list[ModelAdvice]) -> str | None:
    """What the advice assumes of the prompt, for the models that run a prompt at its own length: no prompt is
    known here, so their peaks count the longest they read."""
    sized = [a.entry for a in advice if a.status != "not shipped" and runs_prompts_at_their_length(a.entry)]
    if not sized:
        return None
    tokens = sorted({e.max_sequence_length for e in sized})
    return (f"{', '.join(e.id for e in sized)}: peaks count the longest prompt they read "
            f"({' or '.join(str(t) for t in tokens)} tokens); they run a prompt at its own length, so a shorter "
            "one needs less (generate, bench and the workbench predict with the prompt given)")


def splits_across_ranks(entry: CatalogEntry) -> bool:
    """Whether the engine can split this model's transformer across machines (its family's tensor-parallel plan)."""
    from .families import family_named
    return entry.transformer is not None and family_named(entry.transformer.family).tensor_parallel is not None


def _rank(advice: ModelAdvice) -> tuple:
    return (advice.quality.tier, transformer_params(advice.entry))


def recommend(ram_gb: float | None = None, model: str | None = None, *, budget: Budget | None = None,
              width: int | None = None, height: int | None = None, backend: str = "metal",
              dtype: str | None = None, entries: tuple[CatalogEntry, ...] | None = None,
              ranks: int = 1) -> Recommendation:
    """Advice for every catalog model (or one) on a machine of `ram_gb` GB (or a detected `budget`); with
    ranks > 1, per machine of `ranks` such machines with the transformer split across them (tensor-parallel)."""
    if budget is None:
        if ram_gb is None:
            raise InvalidRequest("give a RAM size (--ram GB) or a detected budget")
        budget = budget_from_gb(ram_gb)
    if entries is None:
        entries = (get_entry(model),) if model else all_entries()
    advice = [advise(e, budget, width, height, backend, dtype, ranks=ranks) for e in entries]
    fitting = [a for a in advice if a.status in ("fits", "tight")]
    comfortable = [a for a in fitting if a.status == "fits"] or fitting
    best_runnable = max((a for a in comfortable if a.entry.runnable), key=_rank, default=None)
    best_overall = max(comfortable, key=_rank, default=None)
    today = [advise(a.entry, budget, width, height, backend, dtype, ENGINE_MEASURES, ranks)
             for a in advice if a.entry.runnable and a.status in ("fits", "tight")]
    today = (max((a for a in today if a.status == "fits"), key=_rank, default=None)
             or max((a for a in today if a.status == "tight"), key=_rank, default=None))
    if ranks > 1:
        for a in advice:
            if a.status != "not shipped" and not splits_across_ranks(a.entry):
                a.warnings.append("its transformer does not split across machines yet (no tensor-parallel plan): "
                                  "the figures are for the whole model on each host")
    # the size said: the one every model is advised at, else what the large models default to (the others say theirs)
    sizes = {(width or e.default_size[0], height or e.default_size[1]) for e in entries}
    w, h = next(iter(sizes)) if len(sizes) == 1 else (width or 1024, height or 1024)
    rec = Recommendation(budget, w, h, backend, advice,
                         best_runnable.entry.id if best_runnable else None,
                         best_overall.entry.id if best_overall else None, today)
    rec.notes.append("peaks are MLX's active memory at the model's default size; the first plan that fits "
                     f"{COMFORTABLE_FRACTION:.0%} of RAM is chosen")
    rec.prompt_note = prompt_bound_note(advice)
    if rec.prompt_note:
        rec.notes.append(rec.prompt_note)
    return rec
