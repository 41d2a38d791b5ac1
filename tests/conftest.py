"""Shared fixtures: real media encoded with PyAV, and a small real segmenter."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from segstream.models.label_sets import LabelSet
from segstream.models.processing import Decision
from segstream.models.segmenter import Prepared, results

SQUARE_COLOUR = (255, 40, 40)

# The files that take longest (minutes of a CI worker; measured from a full run's per-test times,
# 0.3.14's: the Ray engine's file the longest, 2-4 minutes), run first: xdist gives each worker a
# whole file (--dist loadfile), and by default the files with the most tests first, which left the
# few-test, long files (Ray, compile, training, the client's venv) to the end, one worker busy while
# the others idled. Longest first evens the three workers' ends.
SLOWEST_FILES = ("test_batch_ray.py", "test_stream_source.py", "test_reload.py", "test_shutdown.py",
                 "test_redis_outage.py", "test_bench.py", "test_disk_full.py", "test_compile.py", "test_preflight.py",
                 "test_batch.py", "test_config.py", "test_train_own_data.py", "test_client_distribution.py",
                 "test_custom_source.py", "test_redis_refusals.py", "test_pipeline_redis.py", "test_colours.py")


def pytest_configure(config):
    """segstream's modules compiled once, before the workers start: these machines set
    PYTHONDONTWRITEBYTECODE=1, so every command the tests start (about 200) compiled the package
    again from source, 0.3 s of CPU each (compileall writes the .pyc files all the same)."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller did it
        return
    import compileall

    root = Path(__file__).resolve().parents[1]
    for folder in ("pipeline", "models", "connectors", "segstream", "scripts", "examples"):
        compileall.compile_dir(root / folder, quiet=2)


def pytest_collection_modifyitems(items):
    """The files of SLOWEST_FILES first, in its order (pyproject's --no-loadscope-reorder keeps it);
    each file's tests in their own order."""
    rank = {name: number for number, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _segstream_logging_as_it_was():
    """A test that configures segstream's logging (the CLI's main does) leaves it as it found it:
    the CLI's setup stops propagation, which hid later tests' records from caplog."""
    from segstream.pipeline import logs

    logger = logging.getLogger("segstream")
    saved = list(logger.handlers), logger.propagate, logger.level, dict(logs._configured)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate = saved[1]
    logger.setLevel(saved[2])
    logs._configured.update(saved[3])


@pytest.fixture(autouse=True)
def _no_secrets_from_other_tests():
    """The secrets a test's config made segstream remember (kept out of every line it says) go
    with the test: a passphrase 'short' in one hid '.../short.mp4' in a later test's message."""
    from segstream.connectors import redaction

    with redaction._lock:
        saved = set(redaction._secrets)
    yield
    with redaction._lock:
        redaction._secrets.clear()
        redaction._secrets.update(saved)


def unlocated(text: str) -> str:
    """A config error's lines without where the file (or an override) writes each key (``,
    line 12`` / `` (line 12)``): for tests of what the lines say, not of where."""
    where = r"(?:line \d+(?:, from \$[A-Za-z_]\w*(?: and \$[A-Za-z_]\w*)*)?|from (?:--set|the overrides))"
    text = re.sub(rf", {where}\)", ")", text)
    return re.sub(rf" \({where}\)", "", text)


def install_entry_point(site: Path, dist: str, group: str, entry: str) -> None:
    """A distribution ``dist`` in ``site`` (a folder on the module path) whose entry point of
    ``group`` is ``entry`` (``name = module:attribute``), as ``pip install`` would leave it."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n", encoding="utf-8")


def encode_clip(path: Path, frames: int = 40, fps: int = 10, width: int = 160, height: int = 120) -> Path:
    """An H.264 mp4 of a red square moving right over a dark grey background."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        side = height // 4
        for i in range(frames):
            image = np.full((height, width, 3), 30, np.uint8)
            x = (i * 3) % (width - side)
            image[side : 2 * side, x : x + side] = SQUARE_COLOUR
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """40 frames, 160x120, 10 fps (4 s)."""
    return encode_clip(tmp_path_factory.mktemp("media") / "square.mp4")


@pytest.fixture(scope="session")
def fast_clip(tmp_path_factory) -> Path:
    """30 frames, 160x120, 30 fps (1 s): for tests that play a clip in real time."""
    return encode_clip(tmp_path_factory.mktemp("media") / "square_30fps.mp4", frames=30, fps=30)


class ColourSegmenter:
    """A model-family adapter that segments the reddish pixels of each frame as one 'square'
    segment; ``delay_s`` per batch makes it a slow model. Remembers the frames of every batch
    it saw (as numpy arrays)."""

    name = "colour-threshold"
    family = "test"
    labels = LabelSet("colours", ("square",), (True,))
    device = torch.device("cpu")
    batch_buckets = ()

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batches: list[list[np.ndarray]] = []

    def prepare(self, frames, sizes=None):
        images = [f.numpy() for f in frames]
        return Prepared(torch.zeros(len(frames), 0), [im.shape[:2] for im in images], [None] * len(images), {"images": images})

    def forward(self, prepared):
        self.batches.append(prepared.extra["images"])
        if self.delay_s:
            time.sleep(self.delay_s)
        return prepared.extra["images"]

    def decide(self, outputs, prepared):
        return [self.decision(image) for image in outputs]

    def embeddings(self, outputs, prepared, index, decision):
        return torch.zeros(len(decision.class_ids), 4)

    def segment(self, images):
        frames = [torch.from_numpy(image) for image in images]
        prepared = self.prepare(frames)
        outputs = self.forward(prepared)
        return results(self, outputs, prepared, self.decide(outputs, prepared))

    @staticmethod
    def decision(image: np.ndarray) -> Decision:
        red = (image[..., 0] > 150) & (image[..., 1] < 100)
        label_map = torch.from_numpy(np.where(red, 0, -1).astype(np.int32))
        n = int(red.any())
        return Decision(label_map, torch.zeros(n, dtype=torch.long), torch.ones(n), torch.zeros(n, dtype=torch.long),
                        image.shape[:2])


@pytest.fixture
def segmenter() -> ColourSegmenter:
    return ColourSegmenter()


class CollectingSink:
    """Keeps every published result; records flush and close."""

    name = "collect"

    def __init__(self):
        self.results = []
        self.events = []
        self.flushed = self.closed = False

    def publish(self, result):
        self.results.append(result)

    def publish_event(self, event):
        self.events.append(event)

    def poll(self):
        return None

    def flush(self):
        self.flushed = True

    def close(self):
        self.closed = True

    def indices(self, source):
        return [r.index for r in self.results if r.source == source]


@pytest.fixture
def client(server):
    """A client of the module's ``server`` fixture (a Redis), on an emptied Redis (FLUSHALL)."""
    connection = server.client()
    connection.flushall()
    yield connection
    connection.close()
