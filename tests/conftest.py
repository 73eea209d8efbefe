import pytest
import quantbench.core  # noqa: F401  (first: loads the fast BLAS before anything imports mlx)

# Files whose tests ./test.sh runs alone, after the others run in parallel (tests/serial_files.py says which and why).
from serial_files import SERIAL_FILES


def pytest_configure(config):
    """The CPU tile kernel is built into a folder of the tests' own, not the user's cache (before collection:
    a module may build it as it is imported). Shared by the workers: each build is renamed into place whole."""
    import os
    import tempfile

    os.environ.setdefault("QUANTBENCH_KERNEL_DIR", os.path.join(tempfile.gettempdir(),
                                                                f"quantbench-test-kernels-{os.getuid()}"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(autouse=True, scope="session")
def calibration_folder(tmp_path_factory):
    """Calibrations keep their temporary files here, not in the user's cache folder."""
    import os
    folder = tmp_path_factory.mktemp("calibration-spill")
    previous = os.environ.get("QUANTBENCH_CALIBRATION_DIR")
    os.environ["QUANTBENCH_CALIBRATION_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("QUANTBENCH_CALIBRATION_DIR", None)
    else:
        os.environ["QUANTBENCH_CALIBRATION_DIR"] = previous


@pytest.fixture(autouse=True)
def plan_cache_folder(request, tmp_path_factory, monkeypatch):
    """Each test keeps searched plans in a folder of its own (made only when a plan is kept), so that no test reads
    a plan another test searched, nor the user's."""
    import hashlib
    name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    folder = tmp_path_factory.getbasetemp() / "plan-cache" / name
    monkeypatch.setenv("QUANTBENCH_PLAN_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_klein(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny distilled Klein saved to disk."""
    pytest.importorskip("diffusers")
    from reference.pipelines import build_tiny_klein

    folder = tmp_path_factory.mktemp("tiny-klein")
    return folder, build_tiny_klein(folder, distilled=True)


@pytest.fixture(scope="session")
def tiny_klein_base(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny Klein base model (true CFG)."""
    pytest.importorskip("diffusers")
    from reference.pipelines import build_tiny_klein

    folder = tmp_path_factory.mktemp("tiny-klein-base")
    return folder, build_tiny_klein(folder, distilled=False, seed=7)


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot write into: a read-only one, or (as root, who writes anywhere) /sys."""
    import os
    import tempfile
    from pathlib import Path

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        os.close(tempfile.mkstemp(dir="/sys")[0])
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no folder here refuses writes")


@pytest.fixture(scope="session")
def tiny_qwen_image21(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny Qwen-Image 2.1 base model."""
    pytest.importorskip("diffusers")
    from reference.qwen_image21 import build_tiny_qwen_image21

    folder = tmp_path_factory.mktemp("tiny-qwen-image21")
    return folder, build_tiny_qwen_image21(folder)


@pytest.fixture(scope="session")
def tiny_qwen_image21_turbo(tmp_path_factory):
    """(folder, diffusers pipeline) of a tiny Qwen-Image 2.1 Turbo (its sampling grid in model_index.json)."""
    pytest.importorskip("diffusers")
    from reference.qwen_image21 import build_tiny_qwen_image21

    folder = tmp_path_factory.mktemp("tiny-qwen-image21-turbo")
    return folder, build_tiny_qwen_image21(folder, seed=5, turbo=True)
