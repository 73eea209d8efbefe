"""Precisions: how many bits, which method, what group size, and how a user spells them.

A spec is `BITS[:METHOD[:GROUP]]`: `4` (round-to-nearest, groups of 64), `4:mse`, `3:hqq:32`,
`2:gptq:32`. `bf16` (or `none`, `full`, `16`) means no quantization. Every malformed spec is a
one-line InvalidRequest naming what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequest
from ..numbers import is_digits as _ascii_digits  # not str.isdigit: int() reads "٤" as 4
from ..numbers import shown

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
GROUP_SIZE = 64  # the default, what users know from mlx-lm and mflux
DEFAULT_METHOD = "rtn"
FULL_PRECISION_WORDS = ("", "none", "bf16", "16", "full", "unquantized")
# What outputs call no quantization: the weights compute in the compute dtype (float32 on the CPU), not in bf16.
UNQUANTIZED = "unquantized"


@dataclass(frozen=True, order=True)
class QuantSpec:
    """One layer's (or a whole component's) quantization: bits, group size and method."""

    bits: int
    group_size: int = GROUP_SIZE
    method: str = DEFAULT_METHOD

    def __str__(self) -> str:
        """The spec as a user writes it: '4', '4:mse', '3:hqq:32', '4:rtn:32'."""
        if self.group_size != GROUP_SIZE:
            return f"{self.bits}:{self.method}:{self.group_size}"
        return f"{self.bits}:{self.method}" if self.method != DEFAULT_METHOD else str(self.bits)

    @property
    def label(self) -> str:
        """'4-bit', '3-bit hqq g32': the precision as reports show it."""
        extras = [m for m in (self.method if self.method != DEFAULT_METHOD else "",
                              f"g{self.group_size}" if self.group_size != GROUP_SIZE else "") if m]
        return " ".join([f"{self.bits}-bit", *extras])

    def to_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "method": self.method}

    def to_json(self) -> int | str:
        """Bare bits for round-to-nearest in groups of 64 (what files held before methods), else the spec."""
        return self.bits if self == QuantSpec(self.bits) else str(self)


def as_spec(value: "QuantSpec | int | str") -> QuantSpec:
    """An int means that many bits with the default method and group size; a string is a spec as users write
    it ('3:hqq:32'; load_pipeline(quantize='3:gptq') once called that unsupported)."""
    if isinstance(value, QuantSpec):
        return value
    if isinstance(value, str) and not is_full_precision(value):
        return parse_spec(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"unsupported quantization {value!r}")
    return checked(QuantSpec(value))


def checked(spec: QuantSpec, text: str | None = None) -> QuantSpec:
    """The spec, if quantbench can make it; else a one-line InvalidRequest quoting `text` (default: the spec)."""
    from .methods import method_names
    quoted = f"unsupported quantization '{shown(text or spec)}'"
    if spec.bits not in SUPPORTED_BITS:
        raise InvalidRequest(f"{quoted}: bits must be one of {_bits_list()}")
    if spec.group_size not in GROUP_SIZES:
        raise InvalidRequest(f"{quoted}: the group size must be one of {', '.join(map(str, GROUP_SIZES))}")
    if spec.method not in method_names():
        raise InvalidRequest(f"{quoted}: the method must be one of {', '.join(method_names())}")
    return spec


def is_full_precision(value) -> bool:
    return value is None or str(value).strip().lower() in FULL_PRECISION_WORDS


def parse_spec(value: "str | int | QuantSpec | None") -> QuantSpec | None:
    """'bf16'/None -> None; '4' -> 4-bit rtn g64; '3:hqq:32' -> 3-bit hqq g32; anything else is refused."""
    if isinstance(value, QuantSpec):
        return checked(value)
    if is_full_precision(value):
        return None
    text = str(value).strip()
    parts = text.split(":")
    if len(parts) > 3 or not _ascii_digits(parts[0]):
        raise InvalidRequest(f"unsupported quantization '{shown(text)}': {SPEC_HELP}")
    method = parts[1].strip().lower() if len(parts) > 1 else DEFAULT_METHOD
    group = parts[2].strip() if len(parts) > 2 else str(GROUP_SIZE)
    if not _ascii_digits(group):
        raise InvalidRequest(f"unsupported quantization '{shown(text)}': the group size must be one of "
                             f"{', '.join(map(str, GROUP_SIZES))}")
    return checked(QuantSpec(int(parts[0]), int(group), method), text)


def parse_text_encoder_spec(value: "str | int | QuantSpec | None") -> QuantSpec | None:
    """parse_spec for a text encoder: only the transformer is calibrated, so gptq and awq are refused here."""
    return parse_data_free_spec(value, "text encoder", "only the transformer is calibrated: give the text encoder")


def parse_data_free_spec(value: "str | int | QuantSpec | None", what: str, why: str) -> QuantSpec | None:
    """parse_spec where nothing calibrates: a method that does (gptq, awq) is refused before anything loads, in
    one line: "{what} '4:gptq': gptq calibrates, and {why} rtn, hqq, mse (e.g. 4:hqq)"."""
    spec = parse_spec(value)
    if spec is not None and any(m.calibrates for m in choices().methods if m.name == spec.method):
        free = ", ".join(m.name for m in choices().methods if not m.calibrates)
        raise InvalidRequest(f"{what} '{str(value).strip()}': {spec.method} calibrates, and {why} {free} "
                             f"(e.g. {spec.bits}:hqq)")
    return spec


def parse_method_suffix(text: str | None, where: str) -> tuple[str, int | None]:
    """The ':METHOD[:GROUP]' after an auto: budget ('hqq' -> ('hqq', None), 'hqq:32' -> ('hqq', 32));
    None (no suffix) -> ('rtn', None)."""
    from .methods import method_names
    parts = [p.strip().lower() for p in text.split(":")] if text is not None else []
    if len(parts) > 2:
        raise InvalidRequest(f"'{shown(where)}': give auto:BUDGET[:METHOD[:GROUP]] (e.g. auto:2.5:hqq)")
    method = parts[0] if parts else DEFAULT_METHOD
    if method not in method_names():
        raise InvalidRequest(f"'{shown(where)}': the method must be one of {', '.join(method_names())}")
    if len(parts) < 2:
        return method, None
    if not _ascii_digits(parts[1]) or int(parts[1]) not in GROUP_SIZES:
        raise InvalidRequest(f"'{shown(where)}': the group size must be one of {', '.join(map(str, GROUP_SIZES))}")
    return method, int(parts[1])


def _bits_list() -> str:
    return ", ".join(map(str, sorted(SUPPORTED_BITS, reverse=True)))


def _spec_help() -> str:
    return (f"give BITS[:METHOD[:GROUP]] with bits {_bits_list()}, a method such as rtn, mse or hqq, and a "
            f"group of {', '.join(map(str, GROUP_SIZES))} (e.g. 4, 4:mse, 3:hqq:32), or bf16 for none")


SPEC_HELP = _spec_help()


@dataclass(frozen=True)
class MethodChoice:
    name: str
    summary: str  # one line, as --help and the README say it
    calibrates: bool  # True: choosing it runs a calibration first (progress and cancel: CalibrationOptions)


@dataclass(frozen=True)
class Choices:
    """What a precision menu may offer: every method, bit width and group size quantbench makes."""

    methods: tuple[MethodChoice, ...]
    bits: tuple[int, ...]  # most bits first
    group_sizes: tuple[int, ...]
    default: QuantSpec  # what bare bits mean: QuantSpec(bits) is `default` at that many bits


def choices() -> Choices:
    from .methods import all_methods
    methods = tuple(MethodChoice(m.name, m.summary, m.needs_calibration) for m in all_methods().values())
    return Choices(methods, tuple(sorted(SUPPORTED_BITS, reverse=True)), GROUP_SIZES, QuantSpec(4))


def menu_specs(calibrated: bool = False) -> list[QuantSpec]:
    """The precisions a menu offers, most bits first: every bit width with each data-free method in groups of
    64, and in groups of 32 from 4 bits down (where the finer group pays). The methods that calibrate run a
    calibration before the model loads (seconds on the built-in models, much longer on real ones), so they
    are offered only when `calibrated` is asked for."""
    methods = [m.name for m in choices().methods if calibrated or not m.calibrates]
    specs = []
    for bits in sorted(SUPPORTED_BITS, reverse=True):
        specs += [QuantSpec(bits, GROUP_SIZE, m) for m in methods]
        if bits <= 4:
            specs += [QuantSpec(bits, 32, m) for m in methods]
    return specs
