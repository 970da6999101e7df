"""The front door: file types refused by stat before any open, size limits per kind and the
setting that raises them, bounded reads, streamed digests."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from pytest_biascheck import files
from pytest_biascheck.errors import BiascheckError


@pytest.fixture(autouse=True)
def default_limits():
    files.set_limits({})
    yield
    files.set_limits({})


def refusal(path, kind="model") -> str:
    with pytest.raises(BiascheckError) as caught:
        files.read_bytes(path, kind, "model file")
    message = str(caught.value)
    assert "\n" not in message and (str(path) in message or repr(str(path)) in message)
    return message


def test_non_regular_files_are_refused_by_type(tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "gone.pt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.pt"))
    assert "is a FIFO (named pipe), not a regular file" in refusal(tmp_path / "fifo.pt")
    assert "is a character device (a link to /dev/zero)" in refusal(tmp_path / "zero.pt")
    assert "is a folder; give the path of a file inside it" in refusal(tmp_path / "folder.pt")
    assert "is a socket" in refusal(tmp_path / "sock.pt")
    assert "does not exist (a link to" in refusal(tmp_path / "dangling.pt")
    assert "does not exist; check the path" in refusal(tmp_path / "missing.pt")
    assert "contains a NUL byte" in refusal(f"{tmp_path}/a\0b.pt")
    server.close()


def test_size_limit_per_kind_and_the_setting_that_raises_it(tmp_path):
    path = tmp_path / "big.pt"
    with open(path, "wb") as fh:
        fh.truncate(3 * files.MiB)  # sparse
    files.set_limits({"model": "2 MiB"})
    message = refusal(path)
    assert "is 3.0 MiB, over the 2.0 MiB limit for model files" in message
    assert 'limits = { model = "6.0 MiB" }' in message
    assert len(files.read_bytes(path, "image", "image")) == 3 * files.MiB  # another kind
    files.set_limits({"model": 4 * files.MiB})
    assert files.check_file(path, "model", "model file") == 3 * files.MiB


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"modle": 1}, "unknown limit 'modle'; choose from model, "),
        ({"model": "1 parsec"}, 'limits.model must be a positive size such as "64 GiB"'),
        ({"model": 0}, "limits.model must be a positive size"),
        ({"model": True}, "limits.model must be a positive size"),
        ({"image_pixels": "1 GiB"}, "limits.image_pixels must be a positive number of pixels"),
    ],
)
def test_bad_limits_are_one_line(limits, expected):
    with pytest.raises(BiascheckError, match=r"^cfg: ") as caught:
        files.set_limits(limits, "cfg: limits")
    assert expected in str(caught.value)
    assert files.limit("model") == files.DEFAULT_LIMITS["model"]  # nothing half-applied


def test_sizes_parse_in_both_unit_systems():
    files.set_limits({"model": "1.5 GiB", "table": "500 MB", "image": 1000, "image_pixels": 7})
    assert files.limit("model") == 3 * files.GiB // 2 and files.limit("table") == 500 * 10**6
    assert files.limit("image") == 1000 and files.limit("image_pixels") == 7


def test_a_file_that_grows_past_its_size_while_read_is_refused():
    """/proc files report size 0 and then hold text: the read itself is bounded."""
    files.set_limits({"table": 16})
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(BiascheckError, match="over the 16 B limit for table files"):
        files.read_bytes("/proc/self/status", "table", "listing")


def test_text_and_digest(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("héllo".encode())
    assert files.read_text(path, "table", "listing") == "héllo"
    assert (
        files.sha256(path, "table", "listing", b"x")
        == hashlib.sha256(path.read_bytes() + b"x").hexdigest()
    )
    path.write_bytes(b"ok\xff")
    with pytest.raises(BiascheckError, match=r"is not UTF-8 text \(byte 2\); save it as UTF-8"):
        files.read_text(path, "table", "listing")


def test_a_file_swapped_for_a_fifo_after_the_check_is_still_refused(tmp_path, monkeypatch):
    """open_file checks the descriptor it opened (non-blocking), not only the earlier stat."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "check_file", lambda *args: 0)  # the stat saw a regular file
    with (
        pytest.raises(BiascheckError, match="is a FIFO"),
        files.open_file(fifo, "model", "model file"),
    ):
        pass
