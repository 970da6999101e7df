"""The annotation server without a browser: every answer is on disk before the reply, undo and
restart resume, a failed save changes nothing, only local JSON requests are served, and the
pictures are the maps and patches the recipe uses."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mitigations.crayon import annotate, max_normalise
from mitigations.crayon import answers as notes
from mitigations.crayon.explain import cell_boxes, original_maps
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.report.images import overlay

DATA = "synthfaces:n=6"


def source_for(checkpoint: Path, kind: str = "maps"):
    args = annotate.build_parser().parse_args(
        ["--model", str(checkpoint), "--data", DATA, "--out", "x.json", "--kind", kind]
    )
    return annotate.open_source(args)


@pytest.fixture
def served(tiny_checkpoint, tmp_path):
    """A running server for a fresh maps session of the tiny model; yields (url, file, desk)."""
    servers = []

    def start(kind: str = "maps"):
        source = source_for(tiny_checkpoint, kind)
        path = tmp_path / f"{kind}.json"
        session = annotate.resume_or_start(
            path, annotate.new_session(source, kind, None, 0, 2), None
        )
        desk = annotate.Desk(session, path, lambda item: annotate.picture(source, item))
        server = annotate.make_server(desk, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", path, desk

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def call(url: str, path: str, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_each_answer_is_on_disk_before_the_reply(served):
    url, path, _ = served()
    status, state = call(url, "/api/state")
    assert status == 200 and state["total"] == 6 and state["position"] == 0
    for position, answer in enumerate(["yes", "no", "maybe"]):
        status, state = call(url, "/api/answer", {"position": position, "answer": answer})
        saved = json.loads(path.read_text())
        assert status == 200 and saved["answers"][position] == answer
    assert state["position"] == 3 and state["counts"] == {"yes": 1, "no": 1, "maybe": 1, "open": 3}
    status, state = call(url, "/api/undo", {})
    assert state["position"] == 2 and json.loads(path.read_text())["answers"][2] is None
    status, state = call(url, "/api/question", {"question": "  Is it the mouth?  "})
    assert state["question"] == "Is it the mouth?" == json.loads(path.read_text())["question"]


def test_a_restart_resumes_answers_and_undo(served, tiny_checkpoint):
    url, path, _ = served()
    for position in (0, 1, 2):
        call(url, "/api/answer", {"position": position, "answer": "no"})
    source = source_for(tiny_checkpoint)
    fresh = annotate.new_session(source, "maps", None, 0, 2)
    resumed = annotate.resume_or_start(path, fresh, None)
    assert resumed.answers[:4] == ["no", "no", "no", None] and resumed.next_open() == 3
    assert resumed.undo() == 2
    other = annotate.new_session(source, "maps", None, 1, 2)  # another order: same items
    assert annotate.resume_or_start(path, other, "new?").question == "new?"


def test_a_file_for_another_model_is_not_resumed(tiny_checkpoint, tmp_path):
    source = source_for(tiny_checkpoint)
    stale = annotate.new_session(source, "maps", None, 0, 2)
    stale.model = {"path": "old.pt", "sha256": "0"}
    stale.save(tmp_path / "a.json")
    with pytest.raises(BiascheckError, match="was made with model"):
        annotate.resume_or_start(
            tmp_path / "a.json", annotate.new_session(source, "maps", None, 0, 2), None
        )


def test_a_failed_save_changes_nothing(served, monkeypatch):
    url, path, desk = served()
    call(url, "/api/answer", {"position": 0, "answer": "yes"})
    before = path.read_text()

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pytest_biascheck.atomic.os.replace", refuse)
    status, reply = call(url, "/api/answer", {"position": 1, "answer": "no"})
    assert status == 500 and reply["error"] == "not saved: No space left on device"
    assert path.read_text() == before and desk.session.answers[1] is None
    assert not list(path.parent.glob(".*.tmp"))


def test_only_local_json_requests_are_served(served):
    url, path, _ = served()
    assert call(url, "/api/state", headers={"Host": "evil.example:80"})[0] == 403
    request = urllib.request.Request(
        url + "/api/undo", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 403
    assert call(url, "/api/delete", {})[0] == 404
    assert call(url, "/api/answer", {"position": 0, "answer": "perhaps"})[0] == 400
    assert call(url, "/api/answer", {"answer": "yes"})[0] == 400
    assert json.loads(path.read_text())["answers"] == [None] * 6
    with urllib.request.urlopen(url + "/") as response:
        assert b"<title>Crayon annotation</title>" in response.read()


def test_map_pictures_show_the_maps_the_recipe_uses(served, tiny_checkpoint):
    url, _, desk = served()
    position = 2
    image = desk.session.items[position]
    status, item = call(url, f"/api/item/{position}")
    plain, heat = (png(uri) for uri in item["pictures"])
    source = source_for(tiny_checkpoint)
    maps, _ = original_maps(source.model.module, source.model.spec, source.data, 0, 0)
    picture = source.data[image]["image"]
    expected = overlay(picture[None], max_normalise(maps[image : image + 1]), annotate.SIDE)[0]
    assert status == 200 and item["caption"].startswith(f"image {image}:")
    assert plain.shape == heat.shape == (224, 224, 3)
    assert np.abs(plain.astype(int) - annotate.plain(picture).numpy()).max() == 0
    assert np.abs(heat.astype(int) - expected.numpy()).max() <= 1
    assert call(url, "/api/item/6")[0] == 404


def test_patch_pictures_box_the_cell_in_red(served):
    url, _, desk = served("neurons")
    entry = desk.session.items[0]
    status, item = call(url, "/api/item/0")
    (pixels,) = (png(uri) for uri in item["pictures"])
    h, w = 4, 4  # the tiny model's grid at 32 px
    cell = torch.tensor(entry["cell"][0] * w + entry["cell"][1])
    top, left, bottom, right = cell_boxes(cell, (h, w), (224, 224)).tolist()
    red = np.all(pixels == annotate.BOX_RGB.numpy(), axis=-1)
    ring = np.zeros_like(red)
    ring[max(top - 3, 0) : bottom + 3, max(left - 3, 0) : right + 3] = True
    ring[top:bottom, left:right] = False
    assert status == 200 and red[ring].all() and not red[~ring].any()
    assert item["caption"] == f"image {entry['image']}, neurons " + ", ".join(
        map(str, entry["neurons"])
    )
    assert all(isinstance(n, int) for n in entry["neurons"])
    assert notes.KINDS == ("maps", "neurons")


def test_the_command_line_refuses_bad_input_in_one_line(cli, tiny_checkpoint, tmp_path, capsys):
    argv = ["crayon", "annotate", "--model", tmp_path / "missing.pt", "--out", tmp_path / "a.json"]
    assert cli(*argv) == 2
    assert (
        cli("crayon", "annotate", "--model", tiny_checkpoint, "--out", tmp_path / "no" / "a.json")
        == 2
    )
    assert cli("crayon", "annotate", "--model", tiny_checkpoint, "--out", tmp_path / "a.json",
               "--attribute", "Eyeglasses") == 2  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("mitigations: error: ") for line in lines)
    assert "missing.pt does not exist" in lines[0] and "--out" in lines[1]
    assert "does not predict 'Eyeglasses'" in lines[2]
