"""``python -m mitigations crayon annotate``: a local page where a person answers yes / no / maybe
for each saliency map of the original model (``--kind maps``) or each neuron patch (``--kind
neurons``). A standard-library HTTP server on 127.0.0.1 serves it; every answer is written to
``--out`` atomically before the page hears back, so a reload or a restart resumes where the person
stopped and killing the server loses nothing."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mitigations.cam_target import add_cam_target, resolve_cam_target, score_sign, signed_cams
from mitigations.cli import HelpFormatter, Parser
from mitigations.crayon import answers as notes
from mitigations.crayon import max_normalise, patch_items
from mitigations.crayon.explain import cell_boxes, top_patches
from mitigations.recipe import label_column, output_index
from pytest_biascheck import hookspecs
from pytest_biascheck.cam import compute_cams
from pytest_biascheck.data import default_spec, open_data
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import resolve_device
from pytest_biascheck.model import LoadedModel, load_checkpoint
from pytest_biascheck.report.images import overlay, png_data_uri

HOST = "127.0.0.1"
#: Side in pixels of each picture on the page.
SIDE = 224
#: Red of the patch box, and its width in display pixels.
BOX_RGB, BOX_WIDTH = torch.tensor([230, 20, 20], dtype=torch.uint8), 3
ACTIONS = ("answer", "undo", "question")
QUESTIONS = {
    "maps": "Does the highlighted area show whether the image is {attribute}?",
    "neurons": "Does the red box cover something that shows {attribute}?",
}


def build_parser() -> argparse.ArgumentParser:
    """Options of ``crayon annotate``."""
    parser = Parser(
        prog="python -m mitigations crayon annotate",
        description="Serve a page on 127.0.0.1 where a person answers yes / no / maybe for each "
        "saliency map of the original model (--kind maps) or each neuron patch (--kind neurons). "
        "Every answer is saved to --out before the page hears back, so a reload or a restart "
        "resumes where the person stopped.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="the original model")
    parser.add_argument("--out", required=True, metavar="FILE", help="annotations JSON (resumed)")
    parser.add_argument(
        "--data", metavar="SPEC", help="training data (as the recipe's --data); unset: the "
        "synthetic set of the model's attributes",
    )  # fmt: skip
    parser.add_argument(
        "--kind", choices=notes.KINDS, default="maps", help="judge saliency maps or neuron patches"
    )
    parser.add_argument("--attribute", help="the task output; unset: the model's first output")
    parser.add_argument(
        "--question", help="question shown above each picture (editable on the page)"
    )
    add_cam_target(parser, "label")
    parser.add_argument("--top-k", type=int, default=3, help="patches per neuron (as the recipe)")
    parser.add_argument("--seed", type=int, default=0, help="order in which items are shown")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--device", help="cpu, cuda ...; unset: CUDA when available")
    return parser


@dataclass
class Source:
    """The model and data the pictures come from, and the target layer's grid."""

    model: LoadedModel
    data: BiasDataset
    spec: str
    output: int
    column: int | None
    """The output's label column in the data (None for a multiclass head, whose maps need none)."""
    target: str
    device: torch.device
    grid: tuple[int, int] = (0, 0)

    def maps(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(the model's probability of the output [B], max-normalised maps [B, h, w])`` of
        images in [0, 1], scored as the recipe scores them."""
        spec = self.model.spec
        cam = compute_cams(
            self.model.module, spec.normalize(images.to(self.device)), spec.target_layer,
            outputs=[self.output], target="positive", relu=False, normalize=None,
        )  # fmt: skip
        logit = cam.logits[:, self.output]
        labels = None if labels is None else labels.to(self.device)
        sign = score_sign(logit, labels, self.target)
        multiclass = spec.head == "multiclass"
        probability = cam.logits.softmax(1)[:, self.output] if multiclass else logit.sigmoid()
        return probability, max_normalise(signed_cams(cam.cams[:, 0], sign))

    def label_of(self, sample: dict[str, Tensor]) -> Tensor | None:
        """One sample's label of the output ``[1]`` (None without a label column)."""
        return None if self.column is None else sample["labels"][None, self.column]


def open_source(args: argparse.Namespace) -> Source:
    """Load model and training data as the recipe does; errors name the option to fix."""
    model = load_checkpoint(Path(args.model))
    spec = args.data or default_spec(model.spec.attributes)
    if spec is None:
        raise BiascheckError(f"no training data for model {model.name}; pass --data SPEC")
    if model.spec.target_layer is None:
        raise BiascheckError(
            f"model {model.name} names no target layer; set task.target_layer in the checkpoint"
        )
    _, height, width = model.spec.input_size
    datasets = hookspecs.merged(hookspecs.plugin_manager().hook.pytest_biascheck_datasets())
    data = open_data(spec, "train", height if height == width else (height, width), datasets)
    attribute = args.attribute or model.spec.attributes[0]
    output = output_index(model, attribute)
    multiclass = model.spec.head == "multiclass"
    column = None if multiclass else label_column(data, attribute)
    target = resolve_cam_target(args.cam_target, "label", model.spec.head)
    device = resolve_device(args.device)
    model.module.to(device).eval()
    source = Source(model, data, spec, output, column, target, device)
    source.grid = tuple(source.maps(data[0]["image"][None], source.label_of(data[0]))[1].shape[-2:])
    return source


def new_session(
    source: Source, kind: str, question: str | None, seed: int, top_k: int
) -> notes.Annotations:
    """A fresh session: every training image (maps) or every distinct patch (neurons) once, in a
    seeded order."""
    attribute = source.model.spec.attributes[source.output]
    if kind == "maps":
        items: list[Any] = list(range(len(source.data)))
    else:
        patches = top_patches(
            source.model.module, source.model.spec, source.data, top_k, device=source.device
        )
        items = patch_items(patches)[0]
    order = np.random.default_rng(seed).permutation(len(items))
    return notes.Annotations(
        kind=kind,
        attribute=attribute,
        target=source.target,
        model={"path": str(source.model.path), "sha256": source.model.sha256},
        data=source.spec,
        n_images=len(source.data),
        items=[items[i] for i in order],
        question=question or QUESTIONS[kind].format(attribute=attribute),
    )


def resume_or_start(
    path: Path, fresh: notes.Annotations, question: str | None
) -> notes.Annotations:
    """The session saved at ``path`` when it judges the same items for the same model and data
    (a new ``question`` replaces the saved one), else ``fresh``; saved once either way."""
    session = fresh
    if path.exists():
        session = notes.load(path)
        identity = ("kind", "attribute", "target", "model", "data", "n_images")
        notes.check_matches(session, path, {k: getattr(fresh, k) for k in identity}, fresh.items)
        session.question = question or session.question
    session.save(path)
    return session


def plain(image: Tensor) -> Tensor:
    """An image ``[3, H, W]`` in [0, 1] as display pixels ``[SIDE, SIDE, 3]`` uint8."""
    big = F.interpolate(image[None].float(), (SIDE, SIDE), mode="bilinear", align_corners=False)
    return (big[0].clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8)


def picture(source: Source, item: Any) -> dict[str, Any]:
    """What the page shows for one item, as PNG data URIs with a caption: for a map, the image
    and its Grad-CAM overlay; for a patch, the image with a red box around the patch's cell (the
    paper's Fig. 2) and the neurons it stands for."""
    if isinstance(item, int):
        sample = source.data[item]
        image, label = sample["image"], source.label_of(sample)
        probability, found = source.maps(image[None], label)
        tiles = [plain(image), overlay(image[None], found.cpu(), SIDE)[0]]
        labelled = "" if label is None else f"label {int(label[0])}, "
        caption = f"image {item}: {labelled}model {float(probability[0]):.2f}"
        return {"pictures": [png_data_uri(t) for t in tiles], "caption": caption}
    pixels = plain(source.data[item["image"]]["image"])
    row, col = item["cell"]
    cell = torch.tensor(row * source.grid[1] + col)
    top, left, bottom, right = cell_boxes(cell, source.grid, (SIDE, SIDE)).tolist()
    ring = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    w = BOX_WIDTH
    ring[max(top - w, 0) : bottom + w, max(left - w, 0) : right + w] = True
    ring[top:bottom, left:right] = False
    pixels[ring] = BOX_RGB
    caption = f"image {item['image']}, neurons {', '.join(map(str, item['neurons']))}"
    return {"pictures": [png_data_uri(pixels)], "caption": caption}


class Desk:
    """The session behind the page: answers and undo under one lock, each change saved
    atomically before it is acknowledged."""

    def __init__(self, session: notes.Annotations, path: Path, show: Callable[[Any], dict]):
        self.session, self.path, self.show = session, path, show
        self.lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        """What the page needs to draw progress and the next item."""
        s = self.session
        position = s.next_open()
        return {
            "kind": s.kind, "attribute": s.attribute, "question": s.question,
            "annotator": s.annotator, "total": len(s.items), "position": position,
            "counts": s.counts(), "can_undo": bool(s.history), "file": str(self.path),
        }  # fmt: skip

    def item(self, position: int) -> dict[str, Any]:
        """The pictures of item ``position``."""
        if not 0 <= position < len(self.session.items):
            raise ValueError(f"no item {position}")
        return {"position": position, **self.show(self.session.items[position])}

    def change(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply ``answer`` / ``undo`` / ``question``, save, and return the new state; when the
        change is invalid or cannot be saved, nothing changes."""
        with self.lock:
            s = self.session
            kept = (list(s.answers), list(s.history), s.question)
            try:
                if action == "answer":
                    s.answer(int(body["position"]), str(body["answer"]))
                elif action == "undo":
                    s.undo()
                elif action == "question":
                    text = str(body["question"]).strip()
                    if not text:
                        raise ValueError("the question is empty")
                    s.question = text
                else:
                    raise ValueError(f"unknown action {action!r}")
                s.save(self.path)
            except BaseException:
                s.answers, s.history, s.question = kept  # memory stays what the file holds
                raise
            return self.state()


def page() -> bytes:
    """The static annotation page shipped with the package."""
    return Path(__file__).with_name("annotate.html").read_bytes()


def make_server(desk: Desk, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 for ``desk`` (port 0: any free one); call serve_forever()."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # one line per request would drown the URL
            return

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode())

        def _local(self) -> bool:
            """Only pages served from this server may use it (no DNS rebinding)."""
            host = self.headers.get("Host", "")
            return host in (
                f"{HOST}:{self.server.server_port}",
                f"localhost:{self.server.server_port}",
            )

        def do_GET(self) -> None:
            if not self._local():
                return self._json(HTTPStatus.FORBIDDEN, {"error": "wrong host"})
            if self.path == "/":
                return self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            if self.path == "/api/state":
                return self._json(HTTPStatus.OK, desk.state())
            if self.path.startswith("/api/item/"):
                try:
                    return self._json(HTTPStatus.OK, desk.item(int(self.path.rsplit("/", 1)[1])))
                except ValueError as exc:
                    return self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

        def do_POST(self) -> None:
            if not self._local() or self.headers.get("Content-Type") != "application/json":
                return self._json(HTTPStatus.FORBIDDEN, {"error": "JSON from this page only"})
            action = self.path.removeprefix("/api/")
            if action not in ACTIONS:
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"no action {self.path}"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                state = desk.change(action, json.loads(self.rfile.read(length) or b"{}"))
            except (KeyError, ValueError, TypeError) as exc:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {exc}"})
            except OSError as exc:
                return self._json(
                    HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"not saved: {exc.strerror}"}
                )
            return self._json(HTTPStatus.OK, state)

    try:
        return ThreadingHTTPServer((HOST, port), Handler)
    except OSError as exc:
        raise BiascheckError(
            f"cannot listen on {HOST}:{port} ({exc.strerror}); choose another --port (0: any)"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the session, then serve the page until interrupted (Ctrl+C)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise BiascheckError(f"folder of --out {out} does not exist; create it or choose another")
    if args.top_k < 1:
        raise BiascheckError(f"--top-k must be at least 1, got {args.top_k}")
    source = open_source(args)
    fresh = new_session(source, args.kind, args.question, args.seed, args.top_k)
    session = resume_or_start(out, fresh, args.question)
    server = make_server(Desk(session, out, lambda item: picture(source, item)), args.port)
    counts = session.counts()
    print(
        f"annotate {len(session.items)} {session.kind} of {source.model.name} at "
        f"http://{HOST}:{server.server_port}/ ({len(session.items) - counts['open']} answered; "
        f"saved to {out} after every answer); Ctrl+C stops",
        file=sys.stderr,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
