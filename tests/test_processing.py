"""Pre- and post-processing against transformers' EomtImageProcessor on the same frames.

Where the official code and transformers differ we follow the official code, and the tests
compare on what both define the same way:
- panoptic: the official code keeps a segment when won area / own area >= 0.8, transformers
  when > 0.8 (equal only on exact ties, which random weights do not produce);
- letterbox size: the official code scales by min(S/h, S/w) and rounds, so the long side is
  exactly S; transformers' size arithmetic can land one pixel short (333x250 at 128 becomes
  127x96 there, 128x96 here), so the comparisons use sizes where both agree;
- instance: the official code ranks the top 100 (query, class) pairs, transformers takes each
  query's best class; every transformers instance must appear among ours with the same score
  and mask.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segstream.connectors.checkpoints import load_eomt
from segstream.models.eomt import EoMTConfig
from segstream.models import processing
from segstream.models.label_sets import load_label_set
from segstream.models.processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Thresholds,
    _resize_rgb,
    letterbox,
    letterbox_size,
    normalize,
    semantic_windows,
    window_layout,
)
from segstream.models.segmenter import EoMTSegmenter, Prepared, store_autocast_weights
from tests.eomt_reference import preset_for, reference_model, write_checkpoints


def _processor(**options):
    """transformers' EomtImageProcessor (imported here: 3.6 CPU-s, which every test process would pay
    while it collects this module)."""
    from transformers import EomtImageProcessor

    return EomtImageProcessor(**options)


def _frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((count, 9, 12, 3)) * 255).astype(np.uint8)
    return [cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse]


def _pair(tmp_path, cfg: EoMTConfig, task: str, label_set: str, mask_offset: float, seed: int = 3):
    reference = reference_model(cfg, seed=seed, confident=True, mask_offset=mask_offset)
    paths = write_checkpoints(reference, tmp_path)
    model = load_eomt(preset_for(cfg, task, label_set), str(paths["official"]))
    # Exact post-processing in fp32: the label maps the official code (and transformers) make.
    return reference, EoMTSegmenter(model, task, load_label_set(label_set), name="test", precision="fp32",
                                    postprocess="exact")


PANOPTIC = EoMTConfig(img_size=128, dim=96, depth=4, heads=4, num_queries=20, num_classes=133, num_query_blocks=2)


@pytest.mark.parametrize("size", [(150, 200), (200, 150), (96, 128), (300, 225)])
def test_panoptic_matches_transformers(tmp_path, size):
    reference, ours = _pair(tmp_path, PANOPTIC, "panoptic", "coco_panoptic", mask_offset=1.2)
    frames = _frames(2, *size)
    processor = _processor(size={"shortest_edge": 128, "longest_edge": 128}, do_pad=True)
    inputs = processor(images=frames, return_tensors="pt")
    with torch.no_grad():
        outputs = reference(pixel_values=inputs["pixel_values"])
    stuff = list(ours.labels.stuff_ids)
    expected = processor.post_process_panoptic_segmentation(outputs, target_sizes=[size, size], stuff_classes=stuff)
    predictions = ours.segment(frames)
    total_segments = 0
    for exp, pred in zip(expected, predictions):
        assert [(s["id"], s["label_id"]) for s in exp["segments_info"]] == [
            (s["id"], s["class_id"]) for s in pred.segments
        ]
        for s_exp, s_ours in zip(exp["segments_info"], pred.segments):
            assert s_ours["score"] == pytest.approx(s_exp["score"], abs=1e-5)
        agreement = (exp["segmentation"].numpy() == pred.label_map).mean()
        assert agreement >= 0.999
        assert pred.label_map.shape == size and pred.label_map.dtype == np.int32
        total_segments += len(pred.segments)
    assert total_segments >= 2, "the reference weights must produce segments for the comparison to mean anything"


def test_panoptic_segments_describe_their_pixels(tmp_path):
    _, ours = _pair(tmp_path, PANOPTIC, "panoptic", "coco_panoptic", mask_offset=1.2)
    (pred,) = ours.segment(_frames(1, 150, 200))
    assert len(pred.segments) > 0
    assert pred.segments.embeddings.shape == (len(pred.segments), PANOPTIC.dim)
    assert (pred.segments.queries >= 0).all()
    for seg in pred.segments:
        ys, xs = np.nonzero(pred.label_map == seg["id"])
        assert seg["area"] == len(ys)
        assert seg["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert seg["label"] == ours.labels.names[seg["class_id"]]
        assert seg["isthing"] == ours.labels.isthing[seg["class_id"]]
    stuff_classes = [s["class_id"] for s in pred.segments if not s["isthing"]]
    assert len(stuff_classes) == len(set(stuff_classes)), "stuff of one class merges into one segment"


def test_stuff_queries_of_one_class_merge(tmp_path):
    cfg = EoMTConfig(img_size=64, dim=64, depth=2, heads=2, num_queries=6, num_classes=133, num_query_blocks=1)
    reference, ours = _pair(tmp_path, cfg, "panoptic", "coco_panoptic", mask_offset=0.0)
    # Every query says "sky" (a stuff class) with certainty: all surviving queries merge into one.
    sky = ours.labels.names.index("sky-other-merged")
    with torch.no_grad():
        ours.model.class_head.weight.zero_()
        ours.model.class_head.bias.fill_(-20).index_fill_(0, torch.tensor([sky]), 20.0)
    (pred,) = ours.segment(_frames(1, 64, 64))
    assert pred.segments.class_ids.tolist() == [sky]


@pytest.mark.parametrize("size", [(150, 200), (100, 300)])
def test_semantic_windows_match_transformers(tmp_path, size):
    cfg = EoMTConfig(img_size=64, dim=64, depth=3, heads=2, num_queries=10, num_classes=19, num_query_blocks=2)
    reference, ours = _pair(tmp_path, cfg, "semantic", "cityscapes", mask_offset=0.0)
    frames = _frames(2, *size, seed=4)
    processor = _processor(
        size={"shortest_edge": 64, "longest_edge": None}, do_split_image=True, do_pad=False
    )
    inputs = processor(images=frames, return_tensors="pt")
    with torch.no_grad():
        outputs = reference(pixel_values=inputs["pixel_values"])
    outputs.patch_offsets = inputs["patch_offsets"]
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[size, size], size=processor.size)
    # Same windows as transformers cut.
    windows, layouts = semantic_windows([torch.from_numpy(f) for f in frames], 64)
    assert torch.allclose(windows, inputs["pixel_values"], atol=1e-5)
    assert len(layouts[0].starts) == len(inputs["patch_offsets"]) // 2 > 1
    for exp, pred in zip(expected, ours.segment(frames)):
        assert (pred.label_map >= 0).all()  # a semantic map labels every pixel
        ours_classes = pred.segments.class_ids[pred.label_map]
        assert (ours_classes == exp.numpy()).mean() >= 0.999
        assert len(np.unique(exp.numpy())) >= 2


def test_window_layout_spreads_overlap_evenly():
    layout = window_layout(1024, 2048, 512)
    assert layout.scaled == (512, 1024) and layout.starts == (0, 512) and not layout.vertical
    layout = window_layout(512, 1300, 512)
    assert layout.starts == (0, 394, 788)  # 3 windows over 1300 px, 118 px overlap each


def test_instance_contains_every_transformers_instance(tmp_path):
    cfg = EoMTConfig(img_size=96, dim=64, depth=3, heads=2, num_queries=16, num_classes=80, num_query_blocks=2)
    reference, ours = _pair(tmp_path, cfg, "instance", "coco_instance", mask_offset=0.8)
    ours.thresholds = Thresholds(score=0.5)
    frames = _frames(1, 120, 160, seed=5)
    processor = _processor(size={"shortest_edge": 96, "longest_edge": 96}, do_pad=True)
    inputs = processor(images=frames, return_tensors="pt")
    with torch.no_grad():
        outputs = reference(pixel_values=inputs["pixel_values"])
    (expected,) = processor.post_process_instance_segmentation(outputs, target_sizes=[(120, 160)], threshold=0.5)
    (pred,) = ours.segment(frames)
    assert expected["segments_info"], "the reference weights must produce instances"
    ours_by_key = {(s["class_id"], round(s["score"], 4)): s for s in pred.segments}
    for info in expected["segments_info"]:
        key = (info["label_id"], round(info["score"], 4))
        assert key in ours_by_key, f"transformers instance {info} missing from ours"
    scores = [s["score"] for s in pred.segments]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= 0.5 for s in scores)


def test_letterbox_long_side_is_exactly_the_input_size():
    assert letterbox_size(333, 250, 128) == (128, 96)
    assert letterbox_size(1080, 1920, 640) == (360, 640)
    assert letterbox_size(480, 640, 256) == (192, 256)


def test_a_line_scan_frame_is_refused_by_a_windowed_semantic_model_before_it_takes_gigabytes():
    from segstream.models.processing import window_layout

    assert len(window_layout(480, 15360, 512).starts) == 32  # a 32:1 panorama is still taken
    with pytest.raises(ValueError, match=r"a 4096x1 frame would need 4096 windows of 512 x 512 for a semantic model "
                                         r"\(at most 32\): crop it nearer to square first"):
        window_layout(1, 4096, 512)


def test_letterbox_pads_bottom_right_with_zero_pixels():
    frame = torch.full((50, 100, 3), 255, dtype=torch.uint8)
    pixels, scaled = letterbox([frame], 64)
    assert scaled == [(32, 64)]
    # White where the frame is, ImageNet-normalised black in the padding.
    assert torch.allclose(pixels[0, 0, :32], torch.tensor((1 - 0.485) / 0.229), atol=1e-4)
    assert torch.allclose(pixels[0, 0, 32:], torch.tensor(-0.485 / 0.229), atol=1e-4)


@pytest.mark.parametrize("frame, scaled", [((2160, 3840), (144, 256)), ((480, 640), (192, 256)),
                                           ((97, 333), (29, 100)), ((100, 150), (200, 300))])
def test_frames_are_resized_as_torchvision_resizes_them(frame, scaled):
    """The pipeline resizes with torch alone (importing torchvision costs 160 MB); the pixels
    are torchvision's, which transformers' image processor uses."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (*frame, 3), dtype=np.uint8))
    expected = resize(image.permute(2, 0, 1), list(scaled), interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(_resize_rgb(image, *scaled), expected)


def test_the_pipeline_never_imports_torchvision():
    """Its import alone holds 160 MB of a pipeline's memory (docs/BENCHMARKS.md, 4K section)."""
    import subprocess
    import sys

    modules = ["segstream.pipeline.cli", "segstream.pipeline.model_factory", "segstream.pipeline.runtime",
               "segstream.pipeline.tracking", "segstream.connectors.redis_sink", "segstream.connectors.file_source"]
    script = f"import sys; import {', '.join(modules)}; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_agrees_with_fp32(tmp_path, precision):
    _, ours = _pair(tmp_path, PANOPTIC, "panoptic", "coco_panoptic", mask_offset=1.2)
    frames = _frames(2, 150, 200)
    full = ours.segment(frames)
    ours.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    reduced = ours.segment(frames)
    for a, b in zip(full, reduced):
        assert (a.label_map == b.label_map).mean() > 0.9


def test_normalize_in_place_gives_the_textbook_values_and_leaves_its_input_alone():
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(normalize(pixels), (pixels.float() - mean) / std)
    floats = pixels.float()
    normalize(floats)
    assert torch.equal(floats, pixels.float())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_weights_stored_cast_give_the_outputs_autocast_gives(tmp_path, precision):
    """The factory keeps linear and convolution weights in the autocast precision: the network's
    outputs must be bit-equal to autocast casting float32 weights on every call."""
    _, ours = _pair(tmp_path, PANOPTIC, "panoptic", "coco_panoptic", mask_offset=1.2)
    ours.precision, ours.dtype = precision, {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    pixels = torch.randn(2, 3, ours.size, ours.size)
    prepared = Prepared(pixels, [(ours.size, ours.size)] * 2, [(ours.size, ours.size)] * 2)
    before = ours.forward(prepared)
    store_autocast_weights(ours.model, ours.dtype)
    after = ours.forward(prepared)
    linear_dtypes = {m.weight.dtype for m in ours.model.modules() if isinstance(m, torch.nn.Linear)}
    assert linear_dtypes == {ours.dtype}
    assert all(p.dtype == torch.float32 for m in ours.model.modules() if isinstance(m, torch.nn.LayerNorm)
               for p in m.parameters())
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_factory_stores_weights_in_the_precision_it_runs_at():
    from segstream.pipeline.config import ModelConfig
    from segstream.pipeline.model_factory import build_segmenter

    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = build_segmenter(ModelConfig(device="cpu", precision=precision)).model
        assert {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)} == {dtype}
        assert model.q.weight.dtype == torch.float32  # the query tokens are added, not multiplied


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_precision_takes_bf16_only_where_an_x86_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    # oneDNN's own check passes any AVX-512 CPU, where bf16 is emulated, several times slower than fp32
    import platform

    from segstream.models.segmenter import default_precision

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert default_precision(torch.device("cpu")) == expected


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_of(monkeypatch):
    import logging
    import platform

    from segstream.pipeline import model_factory

    lines = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    model_factory.logger.addHandler(handler)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    try:
        assert model_factory.resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert model_factory.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    finally:
        model_factory.logger.removeHandler(handler)
    assert len(lines) == 1 and "emulated" in lines[0] and "auto or fp32" in lines[0]


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx512f avx512bw", "fp32"), ("fpu avx512f avx512_bf16", "bf16"),
                                                 ("fpu amx_tile amx_bf16", "bf16")])
def test_a_torch_without_cpu_checks_reads_the_cpu_s_flags(monkeypatch, tmp_path, flags, expected):
    # torch before about 2.5 has no torch.cpu._is_avx512_bf16_supported: /proc/cpuinfo says it
    import platform

    from segstream.models import segmenter

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    read = segmenter.cpu_flags
    monkeypatch.setattr(segmenter, "cpu_flags", lambda: read(str(cpuinfo)))
    assert segmenter.default_precision(torch.device("cpu")) == expected


def _batch_logits(kept: list[int], queries: int = 12, classes: int = 3, side: int = 16):
    """Mask and class logits of a batch whose frame i keeps its first ``kept[i]`` queries (class 0,
    probability ~1), each query's mask a vertical band of its own."""
    masks = torch.full((len(kept), queries, side, side), -8.0)
    for q in range(queries):
        masks[:, q, :, q % side] = 8.0
    logits = torch.full((len(kept), queries, classes + 1), -10.0)
    logits[..., classes] = 10.0  # no object
    for frame, count in enumerate(kept):
        logits[frame, :count, 0], logits[frame, :count, classes] = 10.0, -10.0
    return masks, logits


def test_a_frame_decided_beside_busier_ones_is_decided_as_alone_even_where_a_query_it_drops_is_nan():
    # frame 0 keeps 3 queries and is padded to frame 1's 4 in their pass; its dropped query 3
    # is NaN everywhere, which must not take the pixels its kept queries win
    masks, logits = _batch_logits([3, 4])
    masks[0, 3] = float("nan")
    args = (64, [(64, 64)] * 2, [(64, 64)] * 2, torch.ones(3, dtype=torch.bool))
    passes, decide = [], processing._panoptic_pass
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processing, "_panoptic_pass", lambda *a: passes.append(list(a[4])) or decide(*a))
        together = processing.panoptic_frames(masks, logits, *args, mode="fast")
    assert passes == [[1, 0]]  # one pass, the busier frame first
    for i in range(2):
        alone = processing.panoptic(masks[i], logits[i], args[0], args[1][i], args[2][i], args[3], mode="fast")
        for name in ("label_map", "class_ids", "scores", "queries"):
            assert torch.equal(getattr(together[i], name), getattr(alone, name)), (i, name)
    assert together[0].class_ids.numel() == 3 and (together[0].label_map >= 0).sum() == 3 * 4 * 64


def test_a_pass_on_the_cpu_joins_frames_only_where_padding_adds_little():
    # padding costs the CPU what a kept mask does: a frame of 9 kept queries and three of 1 are
    # not padded into one pass of 36 masks, though they fit its budget
    masks, logits = _batch_logits([1, 1, 1, 9])
    passes, decide = [], processing._panoptic_pass
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processing, "_panoptic_pass", lambda *a: passes.append(list(a[4])) or decide(*a))
        processing.panoptic_frames(masks, logits, 64, [(64, 64)] * 4, [(64, 64)] * 4, torch.ones(3, dtype=torch.bool),
                                   mode="fast")
    assert passes == [[3], [0, 1, 2]]
