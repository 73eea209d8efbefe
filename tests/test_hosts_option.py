"""`recommend --hosts` as a user mistypes it: every odd value is one line and exit 2, never a traceback or a
hang; a lone host is named as one."""

import os

import pytest

from quantbench.cli.main import main


@pytest.mark.parametrize("hosts, message", [
    (",", "a host's memory is missing between the commas"),  # was a ValueError traceback
    ("16,", "a host's memory is missing between the commas"),  # was read as one host
    ("16,,24", "a host's memory is missing between the commas"),
    ("", "--hosts is empty"),  # was "(Is a directory)": the empty path is the current folder
    ("2x1e30", "each host's memory must be 1 to 4096 GB"),  # was "(No such file or directory)"
    ("2x-1", "each host's memory must be 1 to 4096 GB"),
    ("2xnan", "'nan' is not a size in GB"),
    ("16,nan", "'nan' is not a size in GB"),
    ("2x1_6", "'1_6' is not a size in GB"),  # float() read 16
    ("0x16", "give 1 to 1024 hosts"),
])
def test_odd_hosts_are_one_line_errors(capsys, hosts, message):
    assert main(["recommend", "--model", "demo", "--hosts", hosts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0], err


@pytest.mark.parametrize("kind, message", [
    ("folder", "a folder, not a hostfile"),
    ("fifo", "not a hostfile"),  # reading it waited forever for a writer
    ("empty", "the hostfile is not JSON"),
    ("binary", "the hostfile is not JSON"),
    ("deep", "the hostfile is not JSON"),  # nested too deep: was a RecursionError traceback
])
def test_a_hostfile_that_is_not_one_is_refused_at_once(capsys, tmp_path, kind, message):
    path = tmp_path / "hosts"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes({"empty": b"", "deep": b"[" * 100_000 + b"]" * 100_000}.get(kind, bytes(range(256))))
    assert main(["recommend", "--model", "demo", "--hosts", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_one_host_is_named_as_one(capsys):
    assert main(["recommend", "--model", "demo", "--hosts", "16"]) == 0
    assert "(one host, --hosts 16)" in capsys.readouterr().out
