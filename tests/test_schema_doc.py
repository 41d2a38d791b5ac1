"""docs/SCHEMA.md's own code, run: its pure-Python RLE decoder against pycocotools, and its
"without segstream" reader against real entries in a real redis-server (found probing: the
doc's RLE rule said "from the third integer on", and a decoder written from it read every mask
wrong)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segstream.connectors.redis_wire import to_wire
from tests.redis_servers import RedisProcess
from tests.test_redis_wire import synthetic_scene

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "SCHEMA.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", SCHEMA.read_text(), re.S)


def _block_with(text: str) -> str:
    (block,) = [b for b in _python_blocks() if text in b]
    return block


def _rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


@pytest.mark.parametrize("seed", range(6))
def test_the_docs_rle_decoder_reads_what_pycocotools_encodes(seed):
    namespace: dict = {}
    exec(_block_with("def rle_runs"), namespace)
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    masks = [
        rng.random((height, width)) < 0.5,  # many short runs: differences of either sign
        np.zeros((height, width), bool),
        np.ones((height, width), bool),  # covers the first pixel: starts with a run of 0
    ]
    blob = np.zeros((height, width), bool)
    blob[height // 4 : height // 2 + 1, width // 3 :] = True  # long runs: values of several characters
    masks.append(blob)
    for mask in masks:
        rle = _rle(mask)
        assert sum(namespace["rle_runs"](rle["counts"])) == height * width
        assert np.array_equal(np.array(namespace["rle_mask"](rle), bool).reshape(height, width), mask)


@pytest.mark.parametrize("mask_encoding", ["rle", "idmap"])
def test_the_docs_reader_without_segstream_rebuilds_the_label_map(tmp_path, mask_encoding):
    result = synthetic_scene("cam0", index=3, height=48, width=64)
    code = _block_with("r = redis.Redis(")
    with RedisProcess(tmp_path / "redis") as server:
        client = server.client()
        client.xadd("segstream:cam0:frames", to_wire(result, mask_encoding=mask_encoding))
        code = code.replace('redis.Redis(host="localhost", port=6379)', f'redis.Redis(host="127.0.0.1", port={server.port})')
        namespace: dict = {}
        exec(code, namespace)
    assert np.array_equal(namespace["label_map"], result.label_map)
    # found probing as an attacker: 32 KB stating 16384x16384 took the docs' reader to GBs
    import zstandard

    stating = zstandard.ZstdCompressor().compress(bytes(4 * 100 * 100))
    with pytest.raises(ValueError, match="is not one of this camera's frames"):
        namespace["idmap"](stating, 8192 * 8192)  # an entry claiming more pixels than LARGEST
    with pytest.raises(ValueError, match="is not one of this camera's frames"):
        namespace["idmap"](stating, 48 * 64)  # a blob stating more than the entry's size
