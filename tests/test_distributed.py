"""The lab split across ranks: 2 ranks on localhost with MLX's ring backend, started by mlx.launch."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from quantbench.core.distributed import RankSummary, World, decode, encode, rank_lines, split_runs
from quantbench.core.random_model import write_random_model

LAUNCH = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
QUANTBENCH = [sys.executable, "-m", "quantbench.cli.main"]
JOB_TIMEOUT = 600
# Fields that are timings or memory: they differ between any two runs, distributed or not.
MEASURED = {"seconds", "peak_bytes", "disk_bytes",
            "load_seconds", "step_seconds", "mean_step_seconds", "total_seconds", "load_peak",
            "load_peak_measured", "generate_peak", "generate_peak_measured", "seconds_per_image"}


def free_port_pair() -> int:
    """A port P with P and P + 1 free (the ring listens on one port per rank); other suites may run at once."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


def launch(ranks: int, args: list[str], env_home: Path, extra_env: dict | None = None,
           **kwargs) -> subprocess.Popen:
    env = {"HOME": str(env_home), "XDG_CACHE_HOME": str(env_home / ".cache"), "PATH": "/usr/bin:/bin"}
    command = [*LAUNCH, "-n", str(ranks), "--backend", "ring", "--starting-port", str(free_port_pair()),
               *(f"--env={k}={v}" for k, v in (extra_env or {}).items()), "--", *QUANTBENCH, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, **kwargs)


def without_measurements(data):
    if isinstance(data, dict):
        return {k: without_measurements(v) for k, v in data.items() if k not in MEASURED}
    if isinstance(data, list):
        return [without_measurements(v) for v in data]
    return data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("dist") / "tiny", "tiny")


def compare_args(model: Path, out: Path, steps: int = 2, json_output: bool = True) -> list[str]:
    return ["compare", "--model", str(model), "--prompt", "a red ring", "--precisions", "bf16,8,4,3",
            "--width", "64", "--height", "64", "--steps", str(steps), "--out", str(out)] + (
        ["--json"] if json_output else [])


def test_a_two_rank_compare_gives_the_one_rank_json_and_files(tiny, tmp_path):
    one = subprocess.run([*QUANTBENCH, *compare_args(tiny, tmp_path / "one")], capture_output=True, text=True,
                         timeout=JOB_TIMEOUT, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert one.returncode == 0, one.stderr
    job = launch(2, compare_args(tiny, tmp_path / "two"), tmp_path)
    out, err = job.communicate(timeout=JOB_TIMEOUT)
    single, split = json.loads(one.stdout), json.loads(out)  # rank 0 alone prints: one JSON document
    ranks = split.pop("distributed")["ranks"]
    assert [r["runs"] for r in ranks] == [["unquantized", "q4"], ["q8", "q3"]], err
    assert all(r["host"] == "127.0.0.1" and r["peak_rss"] > 0 for r in ranks)
    for data in (single, split):
        data.pop("outputs")
    assert without_measurements(split) == without_measurements(single)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in ("unquantized.png", "q8.png", "q4.png", "q3.png", "contact_sheet.png"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    written = [json.loads((tmp_path / folder / "report.json").read_text()) for folder in ("one", "two")]
    for report in written:
        report.pop("distributed", None)
        report["contact_sheet"] = Path(report["contact_sheet"]).name
        for row in report["rows"]:
            row["image"] = Path(row["image"]).name
    assert without_measurements(written[1]) == without_measurements(written[0])


def test_a_two_rank_sensitivity_ranking_is_the_one_rank_ranking(tiny, tmp_path):
    args = ["sensitivity", "--model", str(tiny), "--bits", "4", "--granularity", "block", "--size", "32", "--steps",
            "1", "--json"]
    one = subprocess.run([*QUANTBENCH, *args], capture_output=True, text=True, timeout=JOB_TIMEOUT,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert one.returncode == 0, one.stderr
    out, err = launch(2, args, tmp_path).communicate(timeout=JOB_TIMEOUT)
    assert without_measurements(json.loads(out)) == without_measurements(json.loads(one.stdout)), err


@pytest.mark.parametrize("quantize", ["auto:3.5", "auto:3.5:gptq"])
def test_a_two_rank_plan_search_writes_the_one_rank_plan(quantize, tiny, tmp_path):
    """The search's draws around the uniform start are split across the ranks (each unit's progress line is
    printed once, by the rank that drew it); every rank makes the same trades from the gathered errors and
    rank 0 alone writes the plan: the one-rank plan file. With a calibrating method, the statistics the
    trial copies are quantized from are gathered with the calibration prompts split across the ranks. Both on the
    tiny random model (on demo-turbo the gptq case took 81 s of the suite, 2.5 times the CPU time)."""
    prompts = tmp_path / "prompts.txt"  # two, one a rank (and two probe pictures): the built-in lists took 30 s
    prompts.write_text("a red ring\na blue square on the left\n")

    def args(out: Path) -> list[str]:  # progress on
        calibration = ["--calibration-prompts", str(prompts)] if ":gptq" in quantize else []
        return ["plan", "--model", str(tiny), "--quantize", quantize, "--granularity",
                "block", "--size", "32", "--steps", "1", "--prompt", "a red ring", "--prompt", "a blue square",
                *calibration, "--out", str(out)]

    one = subprocess.run([*QUANTBENCH, *args(tmp_path / "one.json")], capture_output=True, text=True,
                         timeout=JOB_TIMEOUT, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert one.returncode == 0, one.stderr
    _, err = launch(2, args(tmp_path / "two.json"), tmp_path).communicate(timeout=JOB_TIMEOUT)
    single, split = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert split["search"]["draws"] > 3 and split["layers"], err  # a real search, with moves to split
    assert without_measurements(split) == without_measurements(single)
    around = [sorted(line for line in text.splitlines() if "around uniform" in line) for text in (one.stderr, err)]
    assert len(around[0]) >= 2 and around[1] == around[0]  # every unit drawn once, not once per rank
    if quantize.endswith(":gptq"):  # the statistics were gathered with the prompts split, one a rank
        assert all(f"[rank {r}] calibrating: sampling its 1 of the 2 calibration prompts" in err for r in (0, 1)), err


def test_a_two_rank_auto_plan_whose_split_cuts_groups_is_refused_before_its_search(tiny, tmp_path):
    """Found as a user: the search ran for minutes, then the load refused its plan. tiny's modulation takes 64
    inputs, 32 a rank: groups of 64 cannot split; the message gives the request that can."""
    job = launch(2, generate_args(str(tiny), tmp_path / "two.png", "auto:3.5"), tmp_path)
    out, err = job.communicate(timeout=JOB_TIMEOUT)
    assert "search" not in err and not (tmp_path / "two.png").exists(), err  # (mlx.launch itself exits 0)
    assert "would cut quantization groups of 64" in err and "(auto:3.5:rtn:32) or run on fewer ranks" in err
    assert "Traceback" not in err


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("MLX_RANK") == str(rank) and "quantbench.cli.main" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def established(process: psutil.Process) -> int:
    return sum(c.status == psutil.CONN_ESTABLISHED for c in process.net_connections("tcp"))


def hold_rank_once_joined(job: subprocess.Popen, rank: int = 1, ranks: int = 2
                          ) -> tuple[psutil.Process, list[str], threading.Thread, float]:
    """Suspend `rank` (SIGSTOP) as soon as every rank has joined the ring, so that it is held mid-job however fast
    it would draw and however late the launcher forwards its output; (its process, the job's stderr lines so
    far and to come, their reader, the test's deadline). In the ring each rank connects to the next and accepts
    the previous one's connection: with both connections in hand, a rank has joined (MLX's ring.cpp)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        assert time.monotonic() < deadline and job.poll() is None, "".join(lines)
        processes = [rank_process(job, r) for r in range(ranks)]
        try:
            if None not in processes and all(established(p) >= 2 for p in processes):
                processes[rank].suspend()
                return processes[rank], lines, reader, deadline
        except psutil.Error:
            pass
        time.sleep(0.01)


def our_lines(lines: list[str]) -> list[str]:
    return [line for line in "".join(lines).splitlines() if line.startswith("quantbench:")]


def sigterm_pending(process: psutil.Process) -> bool:
    """Whether a SIGTERM waits to be delivered to the (stopped) process (Linux's /proc status masks)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)


def test_killing_a_rank_mid_run_stops_the_job_in_one_line_and_writes_nothing(tiny, tmp_path):
    """Whichever comes first, rank 0's own discovery of the loss or mlx.launch's SIGTERM, its one line names
    the rank that died."""
    out = tmp_path / "sweep"
    job = launch(2, compare_args(tiny, out, json_output=False), tmp_path)  # progress on
    rank, lines, reader, _ = hold_rank_once_joined(job)
    rank.send_signal(signal.SIGKILL)
    job.wait(timeout=120)  # no hang: rank 0 stops too
    reader.join(timeout=30)
    ours = our_lines(lines)
    assert len(ours) == 1, "".join(lines)
    assert "rank 0 on 127.0.0.1" in ours[0] and "rank 1 (127.0.0.1)" in ours[0], ours
    assert "nothing" in ours[0] and "Traceback" not in "".join(lines)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the pending signals from /proc")
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_stopped_by_the_launcher_before_they_notice_the_loss_name_the_lost_rank(ranks, tiny, tmp_path):
    """The race the test above leaves to chance, forced: the other ranks are held too, so that mlx.launch's SIGTERM
    (sent once the last rank has died) is waiting for each when it runs again, wherever it was, joining the ring
    included. Each says one line naming the rank that died, found among the launcher's children (with three ranks,
    the other survivor only if it was stopped and gone first), not "another rank"."""
    out = tmp_path / "sweep"
    job = launch(ranks, compare_args(tiny, out, json_output=False), tmp_path)
    dying, lines, reader, deadline = hold_rank_once_joined(job, rank=ranks - 1, ranks=ranks)
    survivors = [rank_process(job, r) for r in range(ranks - 1)]
    for survivor in survivors:
        survivor.suspend()
    try:
        dying.send_signal(signal.SIGKILL)
        while not all(sigterm_pending(survivor) for survivor in survivors):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
    finally:
        for survivor in survivors:
            survivor.resume()
    job.wait(timeout=120)
    reader.join(timeout=30)
    ours = sorted(our_lines(lines))
    assert len(ours) == ranks - 1, "".join(lines)
    named = []  # per survivor, the ranks its line says may have ended early
    for r, line in enumerate(ours):
        # mostly the SIGTERM's line; rarely, on a loaded machine, the loss is seen first (then the gather's line)
        found = re.fullmatch(rf"quantbench: error: rank {r} on 127\.0\.0\.1 (?:was stopped \(SIGTERM\): mlx\.launch does "
                             r"that when another rank ends early, here (.*); nothing half-written was left|"
                             r"lost (.*) during the distributed compare \(.*\); nothing was written)", line)
        assert found, "".join(lines)
        named.append(re.findall(r"rank (\d+) \(127\.0\.0\.1\)", found.group(1) or found.group(2)))
    # each names the rank that died; a survivor that was already gone too (stopped first) may be named beside it,
    # but the first to say its line saw only the dead rank gone
    assert all(str(ranks - 1) in n for n in named) and [str(ranks - 1)] in named, ours
    assert not out.exists() or not any(out.iterdir())


def test_a_rank_stopped_while_still_joining_names_its_peer_from_the_launchers_environment(monkeypatch, tmp_path):
    """Before this rank has recorded its place in the job (the SIGTERM came while it joined the ring), what
    mlx.launch gave it (its rank, the ring's hostfile) still says who it is and who the other rank is."""
    from quantbench.core import distributed
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.2:5001"]]))
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    monkeypatch.setattr(distributed, "_world", None)
    assert distributed.stop_message() == ("rank 0 on 10.0.0.1 was stopped (SIGTERM): mlx.launch does that when "
                                          "another rank ends early, here rank 1 (10.0.0.2); nothing half-written "
                                          "was left")
    monkeypatch.delenv("MLX_RANK")
    assert distributed.stop_message() is None  # not in a job: the plain SIGTERM line


def test_a_rank_that_hangs_without_dying_is_given_up_on_in_one_line(tiny, tmp_path):
    """A frozen rank (SIGSTOP: its sockets stay open, like a host behind a pulled cable) holds the gather; the
    watchdog ends the waiting rank after QUANTBENCH_RANK_TIMEOUT seconds, with nothing written."""
    out = tmp_path / "sweep"
    args = compare_args(tiny, out, json_output=False)
    args[args.index("bf16,8,4,3")] = "bf16,8"  # rank 0 finishes its one picture and waits for rank 1
    job = launch(2, args, tmp_path, extra_env={"QUANTBENCH_RANK_TIMEOUT": "3"})
    frozen, lines, reader, deadline = hold_rank_once_joined(job)
    try:
        while not any("gives up" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
    finally:
        frozen.resume()  # so that mlx.launch can stop it
    job.wait(timeout=120)
    reader.join(timeout=30)
    ours = [line for line in "".join(lines).splitlines() if "gives up" in line]
    assert len(ours) == 1 and ours[0].startswith("quantbench: error: rank 0 on 127.0.0.1 waited 3 s for rank 1")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------
# Calibration (gptq, awq) split across ranks
# ---------------------------------------------------------------------------------------------

CALIBRATION_PROMPTS = "a red circle\na blue square on grey\ntwo green dots\n"  # 3: rank 0 samples 2, rank 1 one


def saved_transformer(folder: Path) -> tuple[dict, dict]:
    """The saved transformer's tensors (as numpy, by bits) and its quantbench metadata, without measurements."""
    import mlx.core as mx
    from quantbench.core.safetensors import read_safetensors_header
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = {k: np.asarray(v.view(mx.uint16) if v.dtype == mx.bfloat16 else v) for k, v in mx.load(str(path)).items()}
    return tensors, without_measurements(json.loads(read_safetensors_header(path)[1]["quantbench"]))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_two_rank_calibration_saves_the_one_rank_model_bit_for_bit(method, tmp_path):
    """Each rank samples its share of the calibration prompts and replays only its calls; the ranks add
    their X^T X exactly, so both quantize every block as one process does: the same saved tensors."""
    (tmp_path / "prompts.txt").write_text(CALIBRATION_PROMPTS)

    def args(out: str) -> list[str]:  # progress on
        return ["save", "--model", "demo-turbo", "--quantize", f"3:{method}", "--calibration-prompts",
                str(tmp_path / "prompts.txt"), "--out", str(tmp_path / out)]

    one = subprocess.run([*QUANTBENCH, *args("one")], capture_output=True, text=True, timeout=JOB_TIMEOUT,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert one.returncode == 0, one.stderr
    _, err = launch(2, args("two"), tmp_path).communicate(timeout=JOB_TIMEOUT)
    (single, single_meta), (split, split_meta) = (saved_transformer(tmp_path / out) for out in ("one", "two"))
    assert single.keys() == split.keys() and any(k.endswith(".scales") for k in split), err
    assert all(np.array_equal(single[k], split[k]) for k in single)
    assert split_meta == single_meta and split_meta["calibration"]["calls"] > 0
    # each rank sampled its share of the prompts; progress still names the block, from each rank
    assert "[rank 0] calibrating: sampling its 2 of the 3 calibration prompts" in err, err
    assert "[rank 1] calibrating: sampling its 1 of the 3 calibration prompts" in err, err
    for rank in (0, 1):
        assert f"[rank {rank}] calibrating: block 5 of 5" in err, err


def test_killing_a_rank_mid_calibration_stops_the_job_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "saved"
    job = launch(2, ["save", "--model", "demo-turbo", "--quantize", "3:gptq", "--out", str(out)], tmp_path)
    rank, lines, reader, _ = hold_rank_once_joined(job)
    rank.send_signal(signal.SIGKILL)
    job.wait(timeout=120)
    reader.join(timeout=30)
    err = "".join(lines)
    ours = [line for line in err.splitlines() if line.startswith("quantbench:")]
    assert len(ours) == 1 and "rank 0 on 127.0.0.1" in ours[0] and "rank 1 (127.0.0.1)" in ours[0], err
    assert "nothing" in ours[0] and "Traceback" not in err
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if out.name in p.name]  # nor staged


def test_payloads_carry_arrays_and_floats_exactly():
    value = {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "psnr": float("inf"), "x": 0.1 + 0.2,
             "flags": {"shape": np.bool_(True)}, "runs": (1, 2)}
    back = decode(encode(value))
    assert np.array_equal(back["image"], value["image"]) and back["image"].dtype == np.uint8
    assert back["psnr"] == float("inf") and back["x"] == 0.1 + 0.2
    assert back["flags"] == {"shape": True} and back["runs"] == [1, 2]


def test_one_rank_runs_everything_in_order_and_reports_no_ranks():
    summaries: list[RankSummary] = []
    assert split_runs(5, lambda i: i * i, what="test", summaries=summaries) == [0, 1, 4, 9, 16]
    assert [s.runs for s in summaries] == [["0", "1", "2", "3", "4"]]
    assert rank_lines(summaries) == []


def test_runs_are_dealt_round_robin():
    assert World(rank=1, size=3, hosts=("a", "b", "c")).mine(8) == [1, 4, 7]
    assert World(rank=0, size=2, hosts=("a", "b")).describe_peers() == "rank 1 (b)"


# ---------------------------------------------------------------------------------------------
# Tensor-parallel generate
# ---------------------------------------------------------------------------------------------

def generate_args(model: str, out: Path, quantize: str | None, steps: int = 4) -> list[str]:
    return ["generate", "--model", model, "--prompt", "a small red circle on a blue background", "--seed", "5",
            "--steps", str(steps), "--width", "64", "--height", "64", "--out", str(out), "--json",
            *(["--quantize", quantize] if quantize else [])]


# FLUX.2 through the built-in demo model, quantized (each rank quantizes its own slices); every other family
# through its tiny reference folder (tests/reference/families.py), in full precision.
TENSOR_PARALLEL_CASES = [("flux2", "demo", "4"), ("flux1", "schnell", None), ("qwen_image", "qwen-image", None),
                         ("z_image", "turbo", None), ("qwen_image21", "turbo", None)]


@pytest.mark.parametrize("family, variant, quantize", TENSOR_PARALLEL_CASES)
def test_a_two_rank_generate_splits_the_transformer_and_draws_the_one_rank_picture(family, variant, quantize,
                                                                                    tmp_path):
    from PIL import Image
    if family == "flux2":
        source = variant
    else:
        pytest.importorskip("diffusers")
        sys.path.insert(0, str(Path(__file__).parent))
        from reference.families import TINY_MODELS
        TINY_MODELS[family][variant].build(tmp_path / "model")
        source = str(tmp_path / "model")
    steps = 4 if family == "flux2" else 2  # the tiny reference models are slower per step than the built-in one
    one = subprocess.run([*QUANTBENCH, *generate_args(source, tmp_path / "one.png", quantize, steps)],
                         capture_output=True, text=True, timeout=JOB_TIMEOUT,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert one.returncode == 0, one.stderr
    job = launch(2, generate_args(source, tmp_path / "two.png", quantize, steps), tmp_path)
    out, err = job.communicate(timeout=JOB_TIMEOUT)
    single, split = json.loads(one.stdout), json.loads(out)
    # float32 on the CPU: the ranks' partial sums add up in another order, so pixels may differ by one level
    # of 255 (the test's stated tolerance), and only a few.
    a = np.asarray(Image.open(tmp_path / "one.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "two.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01, err
    ranks = split["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(len(r["step_seconds"]) == steps for r in ranks)
    whole, share = (data["load"]["quantization"][0]["bytes"] for data in (single, split))
    assert share < (0.62 if family == "flux2" else 0.7) * whole  # rank 0's share (tiny models replicate more)
    # Each rank read its own slices of the split layers, not the whole checkpoint; both ranks the same amount.
    checkpoint = sum(f.stat().st_size for f in (tmp_path / "model" / "transformer").glob("*.safetensors")) \
        if family != "flux2" else None
    assert ranks[0]["transformer_read_bytes"] == ranks[1]["transformer_read_bytes"]
    if checkpoint is not None:
        assert ranks[0]["transformer_read_bytes"] < 0.7 * checkpoint
    if family == "flux2":  # what the memory model predicts one rank holds (recommend --hosts reads it)
        from quantbench.core.catalog import find_entry, shipped_builtin
        from quantbench.core.memory_model import Plan, predict
        plan = Plan(transformer_bits=4, width=64, height=64, backend="cpu", dtype="float32", ranks=2)
        predicted = predict(shipped_builtin(find_entry("demo")), plan).component_bytes("transformer")
        assert abs(share - predicted) <= 0.01 * share


# Run in a process of its own: /proc/self/io's rchar and MLX's peak count the whole process, so in the test
# process they also counted whatever else was still running there (a stderr reader thread an earlier test
# left draining a job's pipe, an array freed late): a figure that moved with the machine's load.
RANK_LOADS = r"""
import gc, json, sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from quantbench.core import checkpoint
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_named

folder = Path(sys.argv[1])


class Rank:  # what shard_inplace asks of an mx.distributed.Group
    def __init__(self, rank: int, size: int):
        self.rank, self.size = (lambda: rank), (lambda: size)


def read_chars() -> int:
    return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])


def load(ranks):
    gc.collect()
    loader = ComponentLoader(family_named("flux2"), folder, mx.float32, None, None, "native", ranks=ranks)
    mx.reset_peak_memory()
    before = read_chars()
    module = loader.transformer()
    read, peak = read_chars() - before, mx.get_peak_memory()
    return dict(tree_flatten(module.parameters())), read, peak, loader.reports["transformer"].bytes_read


whole, read, peak, _ = load(None)
figures = {"whole": {"read": read, "peak": peak, "bytes": sum(a.nbytes for a in whole.values())}}
del whole
for rank in (0, 1):
    mine, read, peak, counted = load(Rank(rank, 2))
    stored = checkpoint.Component.stored
    checkpoint.Component.stored = lambda self, key: None  # every tensor read whole, then sliced
    try:
        sliced, sliced_read, _, _ = load(Rank(rank, 2))
    finally:
        checkpoint.Component.stored = stored
    figures[rank] = {"read": read, "peak": peak, "counted": counted, "sliced_read": sliced_read,
                     "share": sum(a.nbytes for a in mine.values()), "same_keys": mine.keys() == sliced.keys(),
                     "same_tensors": all(mine[k].dtype == sliced[k].dtype and mx.array_equal(mine[k], sliced[k]).item()
                                         for k in mine)}
    del mine, sliced
print(json.dumps(figures))
"""


def test_a_rank_reads_only_its_slices_and_its_load_peak_is_its_share(tmp_path):
    """Loading rank r of 2 (loading calls no collective) reads each split layer's slices straight from the
    file: about half the checkpoint's bytes, counted by the kernel (/proc/self/io), an MLX load peak near the
    rank's share rather than the whole transformer, and exactly the tensors that reading the whole file and
    slicing it (MLX's shard_inplace) gives. Measured in a fresh process (RANK_LOADS), which runs nothing else."""
    folder = write_random_model(tmp_path / "klein", "tiny")
    done = subprocess.run([sys.executable, "-c", RANK_LOADS, str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    whole = figures["whole"]
    for rank in ("0", "1"):
        mine = figures[rank]
        assert mine["same_keys"] and mine["same_tensors"]
        assert mine["sliced_read"] >= whole["read"] * 0.95 and mine["read"] < 0.6 * whole["read"], (mine, whole)
        assert abs(mine["read"] - mine["counted"]) < 0.05 * mine["counted"]  # the report's figure is what the kernel saw
        assert mine["share"] < 0.6 * whole["bytes"] and mine["peak"] < 0.7 * whole["peak"], (mine, whole)


def test_a_split_klein_4b_holds_at_most_052_of_the_transformer_per_rank():
    from quantbench.core.catalog import get_entry
    from quantbench.core.memory_model import Plan, predict

    klein = get_entry("klein-4b")
    for bits in (None, 8, 4):
        whole = predict(klein, Plan(transformer_bits=bits)).component_bytes("transformer")
        share = predict(klein, Plan(transformer_bits=bits, ranks=2)).component_bytes("transformer")
        assert share <= 0.52 * whole


# ---------------------------------------------------------------------------------------------
# Fit across machines
# ---------------------------------------------------------------------------------------------

def recommend_json(capsys, *args) -> dict:
    from quantbench.cli.main import main
    assert main(["recommend", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_two_16gb_macs_run_klein_9b_at_a_precision_one_cannot(capsys):
    one = recommend_json(capsys, "--ram", "16", "--model", "klein-9b")["models"][0]
    two = recommend_json(capsys, "--hosts", "2x16", "--model", "klein-9b")
    split = two["models"][0]
    assert two["hosts"] == {"count": 2, "memory_gb": [16.0, 16.0], "per_rank": True}
    assert split["plan"]["ranks"] == 2 and split["peak_bytes"] < one["peak_bytes"]
    assert (split["status"], split["precision"]) != (one["status"], one["precision"])  # a better fit, per host


def test_hosts_from_a_hostfile_and_the_smallest_host_decides(capsys, tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "mac-a", "ips": ["10.0.0.1"], "memory_gb": 24},
                                    {"ssh": "mac-b", "ips": ["10.0.0.2"], "memory_gb": 16}]))
    from_file = recommend_json(capsys, "--hosts", str(hostfile), "--model", "klein-4b")
    listed = recommend_json(capsys, "--hosts", "16,16", "--model", "klein-4b")
    assert from_file["models"] == listed["models"] and from_file["budget"] == listed["budget"]


@pytest.mark.parametrize("hosts, message", [
    ("0x16", "give 1 to 1024 hosts"), ("2x0", "each host's memory must be"), ("missing.json", "readable hostfile"),
])
def test_bad_hosts_are_one_line_errors(capsys, hosts, message):
    from quantbench.cli.main import main
    assert main(["recommend", "--hosts", hosts]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_hostfile_host_without_its_memory_is_named(capsys, tmp_path):
    from quantbench.cli.main import main
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"hosts": [{"ssh": "mac-a", "ips": ["10.0.0.1"]}]}))
    assert main(["recommend", "--hosts", str(hostfile)]) == 2
    assert 'mac-a has no "memory_gb"' in capsys.readouterr().err
