"""COCO panoptic files of a video: a PNG per frame and one JSON, as the COCO panoptic format
defines them (what panopticapi's ``pq_compute`` and detectron2 read), optionally with the frames
as JPEGs; and one JSON over the videos of a batch.

Each PNG holds segment ids in its RGB channels, ``id = R + 256 G + 256^2 B``; id 0 is void (no
segment). A frame's segment with label-map value ``k`` has PNG id ``k + 1``. The JSON has
``images`` (one per frame: ``id`` is ``image_id(number, frame)``, unique across the videos of a
batch as each has its own ``number``; ``file_name`` names the frame's JPEG when they are
written, and is left out when they are not), ``annotations`` (one per frame: ``file_name`` of
its PNG and ``segments_info`` with id, category_id, area, bbox [x, y, w, h], iscrowd, plus
segstream's score and track_id) and ``categories`` (the model's classes in class order; a
class's category id is its COCO id where the label set has one, else class id + 1). What a
batch writes, for its users: docs/OPERATIONS.md, "COCO panoptic files".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from segstream.connectors.errors import SinkError
from segstream.connectors.output_files import open_output, replace_synced
from segstream.connectors.redis_wire import parse_json
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.connectors.threads import name_os_thread_as_python
from segstream.models.label_sets import LabelSet
from segstream.models.results import NO_TRACK, FrameResult, Segments

log = logging.getLogger(__name__)

BATCH_PANOPTIC_NAME = "panoptic_batch.json"  # a batch's JSON over all its videos (pipeline.batch.BATCH_PANOPTIC)
PNG_COMPRESSION = 1  # zlib level: panoptic PNGs are flat colour fields, level 1 is 3x faster for ~10% more bytes
# PNG encoding (34 ms a 1080p frame) runs on threads of its own, off the thread that writes the
# results (cv2 releases the GIL), with at most this many frames waiting for them
PNG_WRITERS, PNGS_WAITING = 2, 4
JPEG_QUALITY = 95
# image id = video number * FRAMES_PER_VIDEO + frame: unique across a batch, readable (300000012 is
# frame 12 of video 3), and below 2^53 (exact in JavaScript) for 90 million videos
FRAMES_PER_VIDEO = 100_000_000


def image_id(number: int, frame: int) -> int:
    """The COCO image id of frame ``frame`` of the batch's video ``number``."""
    if not 0 <= frame < FRAMES_PER_VIDEO:
        raise SinkError(f"frame {frame} is beyond the {FRAMES_PER_VIDEO} frames a video's COCO image ids can number")
    return number * FRAMES_PER_VIDEO + frame


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """H x W segment ids (>= 0) -> H x W x 3 uint8 RGB, ``id = R + 256 G + 256^2 B``: the low
    three bytes of each id as a little-endian 32-bit number."""
    ids = np.ascontiguousarray(ids, "<u4")
    return ids.view(np.uint8).reshape(*ids.shape, 4)[..., :3]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB -> H x W int64 ids, ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb, np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def category_ids(labels: LabelSet) -> list[int]:
    """The COCO category id of each class: the label set's ``coco_ids`` where its file gives them
    (the shipped COCO sets: outputs of COCO models match COCO's ground truth; a training's on COCO
    data: the data's own ids), else class id + 1 (COCO ids start at 1)."""
    if labels.coco_ids is not None:
        return list(labels.coco_ids)
    return [class_id + 1 for class_id in range(labels.num_classes)]


def categories(labels: LabelSet) -> list[dict]:
    """The ``categories`` list of a COCO panoptic JSON for ``labels``, in class order."""
    from segstream.connectors.overlay import id_colour

    return [
        {"id": cid, "name": name, "supercategory": "thing" if thing else "stuff", "isthing": int(thing),
         "color": list(id_colour(class_id))}
        for class_id, (cid, name, thing) in enumerate(zip(category_ids(labels), labels.names, labels.isthing))
    ]


class CocoPanopticWriter:
    """Writes ``<directory>/<name>/<frame>.png`` as frames come and ``<directory>/<name>.json``
    on ``close()``: the layout of COCO's ``panoptic_val2017.json`` beside ``panoptic_val2017/``;
    with ``images``, each frame too as ``<directory>/images/<frame>.jpg`` (as ``val2017/``).
    ``number`` is the video's number in its batch (its image ids), ``video`` its file name and
    ``video_id`` its id (kept with each image)."""

    def __init__(self, directory: str | Path, labels: LabelSet, name: str = "panoptic", video: str = "", *,
                 number: int = 0, video_id: str = "", images: bool = False):
        self.directory = Path(directory)
        self.labels = labels
        self.name = name
        self.video = video
        self.video_id = video_id
        self.number = number
        self.png_dir = self.directory / name
        self.image_dir = self.directory / "images" if images else None
        self.json_path = self.directory / f"{name}.json"
        self._category = category_ids(labels)
        self._images: list[dict] = []
        self._annotations: list[dict] = []
        self._encoder: ThreadPoolExecutor | None = None
        self._waiting: deque[Future] = deque()
        for folder in (self.png_dir, self.image_dir):
            try:
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SinkError(f"cannot create '{folder}': {error.strerror}") from None

    def add(self, result: FrameResult) -> None:
        """Write the PNG of one frame and remember its annotation."""
        if result.segment_map is None:
            raise SinkError(f"{result.source} frame {result.index} carries no label map to write as COCO panoptic")
        segments = result.segments
        png_ids = np.asarray(result.label_map, np.int32) + 1  # no segment (-1) is void (0)
        file_name = f"{result.index:08d}.png"
        frame_image_id = image_id(self.number, int(result.index))
        self._encode(self.png_dir / file_name, np.ascontiguousarray(id_to_rgb(png_ids)[..., ::-1]), ".png")
        image = {"id": frame_image_id, "width": int(result.width), "height": int(result.height)}
        if self.image_dir is not None:
            if result.image is None or result.image.shape[:2] != png_ids.shape:
                raise SinkError(f"{result.source} frame {result.index} came without its full-size image for the "
                                "COCO images")
            image["file_name"] = f"{result.index:08d}.jpg"
            self._encode(self.image_dir / image["file_name"], np.ascontiguousarray(result.image[..., ::-1]), ".jpg")
        areas = np.bincount(png_ids.ravel(), minlength=int(segments.ids.max(initial=-1)) + 2)
        extents = ndimage.find_objects(png_ids)  # one pass: the bounding slices of ids 1, 2, ...
        infos = []
        for row in range(len(segments)):
            png_id = int(segments.ids[row]) + 1
            area = int(areas[png_id]) if png_id < len(areas) else 0
            if area == 0:
                continue  # COCO panoptic lists only segments that own pixels
            rows, columns = extents[png_id - 1]
            info = {
                "id": png_id,
                "category_id": self._category[int(segments.class_ids[row])],
                "area": area,
                "bbox": [columns.start, rows.start, columns.stop - columns.start, rows.stop - rows.start],
                "iscrowd": 0,
                "score": round(float(segments.scores[row]), 6),
            }
            if int(segments.track_ids[row]) != NO_TRACK:
                info["track_id"] = int(segments.track_ids[row])
            infos.append(info)
        image["frame"] = int(result.index)
        if result.pts_seconds is not None:
            image["pts_s"] = float(result.pts_seconds)
        if self.video:
            image["video"] = self.video
        if self.video_id:
            image["video_id"] = self.video_id
        self._images.append(image)
        self._annotations.append({"image_id": frame_image_id, "file_name": file_name, "segments_info": infos})

    def _encode(self, path: Path, bgr: np.ndarray, kind: str) -> None:
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="segstream-png",
                                               initializer=name_os_thread_as_python)
        self._waiting.append(self._encoder.submit(_write_image, path, bgr, kind))
        while len(self._waiting) > PNGS_WAITING or (self._waiting and self._waiting[0].done()):
            self._waiting.popleft().result()  # raises the SinkError of a PNG that could not be written

    def close(self) -> None:
        """Wait for the PNGs, then write the JSON (frames in the order they came)."""
        try:
            while self._waiting:
                self._waiting.popleft().result()
        finally:
            if self._encoder is not None:
                self._encoder.shutdown(cancel_futures=True)
                self._encoder = None
        document = {
            "info": {"description": f"segstream panoptic segmentation of {self.video or self.name}"},
            "licenses": [],
            "images": self._images,
            "annotations": self._annotations,
            "categories": categories(self.labels),
        }
        try:
            self.json_path.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
        except OSError as error:
            raise SinkError(f"cannot write '{self.json_path}': {error.strerror}") from None


def _write_image(path: Path, bgr: np.ndarray, kind: str) -> None:
    # encoded in memory and written by us: cv2.imwrite prints libpng's own "Write Error" to stderr
    # on a full disk, and says no more than False
    if kind == ".png":
        options = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    else:
        options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    ok, encoded = cv2.imencode(kind, bgr, options)
    if not ok:
        raise SinkError(f"cannot encode {path}")
    try:
        with open_output(path, "wb") as f:
            f.write(encoded.tobytes())
    except OSError as error:
        raise SinkError(f"cannot write {path}: {error.strerror or error}") from None


def write_batch_panoptic(path: str | Path, videos: Sequence[tuple[str, int]]) -> int:
    """``path``: one COCO panoptic JSON over the videos ``(video id, number)`` of a batch, from
    each one's ``<folder of path>/<video id>/panoptic.json``, in the given order, with every
    ``file_name`` relative to the folder of ``path`` (``<video id>/panoptic/<frame>.png``,
    ``<video id>/images/<frame>.jpg``). Written aside, one video in memory at a time, and moved
    into place. A video whose JSON is missing or has other categories is left out, with a
    warning. Returns how many videos it holds."""
    path = Path(path)
    root = path.parent
    tmp, side = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".annotations.tmp")
    cats = None
    merged = written = annotated = 0
    try:
        with open_output(tmp, "w", encoding="utf-8") as out, open_output(side, "w", encoding="utf-8") as annotations:
            out.write('{"info":{"description":"segstream panoptic segmentation of a batch"},"licenses":[],"images":[')
            for video_id, number in videos:
                try:
                    document = json.loads((root / video_id / "panoptic.json").read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    log.warning("%s: left out of %s: cannot read its panoptic.json (%s)", video_id, path.name,
                                getattr(error, "strerror", None) or error)
                    continue
                if cats is None:
                    cats = document["categories"]
                elif document["categories"] != cats:
                    log.warning("%s: left out of %s: its categories are another model's", video_id, path.name)
                    continue
                ids = {}
                for image in document["images"]:
                    own_id = image["id"]  # the manifest's number decides
                    image["id"] = ids[own_id] = image_id(number, int(image.get("frame", own_id)))
                    if "file_name" in image:
                        image["file_name"] = f"{video_id}/images/{image['file_name']}"
                    image.setdefault("video_id", video_id)
                    out.write(("," if written else "") + json.dumps(image, separators=(",", ":")))
                    written += 1
                for annotation in document["annotations"]:
                    annotation["image_id"] = ids[annotation["image_id"]]
                    annotation["file_name"] = f"{video_id}/panoptic/{annotation['file_name']}"
                    annotations.write(("," if annotated else "") + json.dumps(annotation, separators=(",", ":")))
                    annotated += 1
                merged += 1
            annotations.close()
            out.write('],"annotations":[')
            with open(side, encoding="utf-8") as written_annotations:
                shutil.copyfileobj(written_annotations, out)
            out.write('],"categories":' + json.dumps(cats or [], separators=(",", ":")) + "}\n")
        replace_synced(tmp, path)
    except OSError as error:
        raise SinkError(f"cannot write '{path}': {error.strerror or error}") from None
    finally:
        for leftover in (tmp, side):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    return merged


def read_coco_panoptic(json_path: str | Path, png_dir: str | Path | None = None) -> list[FrameResult]:
    """The frames of a COCO panoptic JSON and its PNGs (``png_dir`` defaults to the folder
    named like the JSON) as ``FrameResult``s: label-map values are PNG id - 1 (-1 for void),
    class ids are positions in ``categories``."""
    json_path = Path(json_path)
    png_dir = Path(png_dir) if png_dir is not None else json_path.with_suffix("")
    document = json.loads(json_path.read_text(encoding="utf-8"))
    cats = document["categories"]
    class_of = {c["id"]: i for i, c in enumerate(cats)}
    images = {image["id"]: image for image in document["images"]}
    frames = []
    for annotation in document["annotations"]:
        image = images[annotation["image_id"]]
        bgr = cv2.imread(str(png_dir / annotation["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(png_dir / annotation["file_name"])
        ids = rgb_to_id(bgr[..., ::-1])
        infos = annotation["segments_info"]
        class_ids = [class_of[s["category_id"]] for s in infos]
        segments = Segments.build(
            ids=[s["id"] - 1 for s in infos],
            class_ids=class_ids,
            labels=[cats[c]["name"] for c in class_ids],
            isthing=[bool(cats[c]["isthing"]) for c in class_ids],
            scores=[s.get("score", 1.0) for s in infos],
            areas=[s["area"] for s in infos],
            boxes=[[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in infos)],
            track_ids=[s.get("track_id", NO_TRACK) for s in infos],
        )
        frames.append(FrameResult(
            source=image.get("video", ""), index=int(image.get("frame", image["id"])),
            width=int(image["width"]), height=int(image["height"]),
            segment_map=(ids - 1).astype(np.int32), segments=segments, pts_seconds=image.get("pts_s"),
        ))
    return frames


class CocoPanopticDataset:
    """Pictures of one's own with their ground truth in the COCO panoptic format: what
    ``scripts/train_synthetic.py --data`` trains on and ``segstream evaluate --data`` measures.

    ``json_path`` is the JSON; its PNGs are in ``masks`` (default: the folder named like the JSON,
    COCO's layout, else ``panoptic/`` beside it, a batch's) and its pictures in ``images`` (default
    ``images/`` beside it, where a batch with ``batch.coco_images: true`` writes them; COCO keeps
    them apart, e.g. ``train2017/``). Classes are the categories in the order of their ids (class
    id i is the i-th smallest category id); ``labels`` names them. A frame's ground truth has
    segment ids 0..S-1 in ``segments_info`` order; crowd regions (``iscrowd: 1``), PNG colours no
    segment names, and segments of no pixel are void (-1); ``scored_frames`` gives the crowd
    regions apart, for PQ. Every problem is one ``ConfigError``
    naming the file and what to do, the pictures' and PNGs' existence checked at once."""

    def __init__(self, json_path: str | Path, masks: str | Path | None = None, images: str | Path | None = None,
                 options: tuple[str, str] = ("--masks", "--images")):
        # ``options``: the command's options that name the two folders, for its messages
        from segstream.connectors.errors import ConfigError

        self.json_path = path = Path(json_path)
        try:
            # utf-8-sig: a byte-order mark (some Windows tools write one) is no reason to refuse
            document = parse_json(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file — give the COCO panoptic JSON of your annotations") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
        except ValueError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        problem = _coco_document_problem(document)
        if problem:
            raise ConfigError(f"{path}: {problem} (the COCO panoptic format: docs/OPERATIONS.md, \"COCO panoptic files\")")
        cats = sorted(document["categories"], key=lambda c: c["id"])
        self.categories = cats
        self._class_of = {c["id"]: i for i, c in enumerate(cats)}
        # named after the data: the JSON's name, or its folder's for a batch's panoptic.json
        name = path.stem if path.stem != "panoptic" else path.resolve().parent.name or path.stem
        self.labels = LabelSet(name, tuple(str(c["name"]) for c in cats), tuple(bool(c["isthing"]) for c in cats),
                               coco_ids=tuple(c["id"] for c in cats))
        batch_wide = path.name == BATCH_PANOPTIC_NAME  # its file names are relative to its folder
        if masks is None:
            masks = (path.parent if batch_wide else path.with_suffix("") if path.with_suffix("").is_dir()
                     else path.parent / "panoptic")
        self.masks = Path(masks)
        self.images = Path(images) if images is not None else path.parent if batch_wide else path.parent / "images"
        pictures = {image["id"]: image for image in document["images"]}
        if len(pictures) != len(document["images"]):
            raise ConfigError(f"{path}: two images have one id")
        self.samples: list[tuple[dict, dict]] = []
        for k, annotation in enumerate(document["annotations"]):
            image = pictures.get(annotation["image_id"])
            if image is None:
                raise ConfigError(f"{path}: annotations[{k}] is of image {annotation['image_id']}, which images lacks")
            if not image.get("file_name"):
                raise ConfigError(f"{path}: image {image['id']} names no picture (file_name) — a batch writes them "
                                  "with batch.coco_images: true")
            unknown = {s["category_id"] for s in annotation["segments_info"]} - self._class_of.keys()
            if unknown:
                raise ConfigError(f"{path}: annotations[{k}] has category ids {sorted(unknown)} that categories lacks")
            self.samples.append((image, annotation))
        if not self.samples:
            raise ConfigError(f"{path}: no annotations — nothing to train on or measure")
        self.labelled: list[int] | None = None  # check()'s: the pictures with a labelled segment
        problems = []  # both folders' at once: one run of the command finds both
        for folder, key, what, option in ((self.images, 0, "picture", options[1]), (self.masks, 1, "PNG", options[0])):
            missing = [str(folder / pair[key]["file_name"]) for pair in self.samples
                       if not (folder / pair[key]["file_name"]).is_file()]
            if missing:
                problems.append(f"{missing[0]}: no such {what} ({len(missing)} of {len(self.samples)} missing) — give "
                                f"the folder that holds them with {option}")
        if problems:
            raise ConfigError("; ".join(problems))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def __getitem__(self, k: int) -> tuple[np.ndarray, FrameResult]:
        """Picture ``k`` (H x W x 3 uint8 RGB) and its ground truth, crowd regions void: what training learns."""
        image, truth, _ = self._read(k)
        return image, truth

    def scored_frames(self, count: int | None = None) -> Iterator[tuple[np.ndarray, FrameResult, np.ndarray]]:
        """The first ``count`` pictures (None: all) as ``segstream evaluate --data`` scores them:
        each picture, its ground truth and its crowd regions (H x W, the class id of each pixel of
        an ``iscrowd`` segment, -1 elsewhere: ``PanopticTally.add``'s ``crowd``)."""
        return (self._read(k) for k in range(len(self) if count is None else min(count, len(self))))

    def _read(self, k: int) -> tuple[np.ndarray, FrameResult, np.ndarray]:
        from segstream.connectors.errors import ConfigError

        image_entry, annotation = self.samples[k]
        picture_path, png_path = self.images / image_entry["file_name"], self.masks / annotation["file_name"]
        bgr = cv2.imread(str(picture_path), cv2.IMREAD_COLOR)
        png = cv2.imread(str(png_path), cv2.IMREAD_COLOR)
        for read, where in ((bgr, picture_path), (png, png_path)):
            if read is None:
                raise ConfigError(f"{where}: not an image OpenCV can read")
        if png.shape != bgr.shape:
            raise ConfigError(f"{png_path}: {png.shape[1]}x{png.shape[0]}, but its picture {picture_path} is "
                              f"{bgr.shape[1]}x{bgr.shape[0]}")
        ids = rgb_to_id(png[..., ::-1])
        present, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        kept = []  # (PNG id, class id) of the segments that are no crowd and own pixels
        crowd_class = np.full(len(present), -1, np.int32)  # each PNG colour's crowd class, -1: none
        for info in annotation["segments_info"]:
            at = int(np.searchsorted(present, info["id"]))
            if at < len(present) and present[at] == info["id"]:
                if info.get("iscrowd"):
                    crowd_class[at] = self._class_of[info["category_id"]]
                else:
                    kept.append((info["id"], self._class_of[info["category_id"]]))
        value = np.full(len(present), -1, np.int32)  # each PNG colour's segment, -1: void
        for j, (png_id, _) in enumerate(kept):
            value[np.searchsorted(present, png_id)] = j
        inverse = inverse.reshape(ids.shape)
        label_map = value[inverse]
        areas = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(kept)) if kept else np.zeros(0, np.int64)
        class_ids = [c for _, c in kept]
        segments = Segments.build(
            ids=range(len(kept)), class_ids=class_ids, labels=[self.labels.names[c] for c in class_ids],
            isthing=[self.labels.isthing[c] for c in class_ids], areas=areas,
        )
        height, width = label_map.shape
        truth = FrameResult(source=self.labels.name, index=k, width=width, height=height, segment_map=label_map,
                            segments=segments, file=str(picture_path))
        return np.ascontiguousarray(bgr[..., ::-1]), truth, crowd_class[inverse]

    def check(self, progress: bool = True) -> list[int]:
        """Read every picture and PNG once (a bad one found now, not hours into a training run):
        the indices of those with a labelled segment (a picture not labelled yet teaches nothing)."""
        from tqdm import tqdm

        labelled = self.labelled = []
        # disable=None: a bar on a terminal only
        for k in tqdm(range(len(self)), desc="checking pictures", unit="picture", file=sys.stderr,
                      disable=bars_off() if progress else True, **bar_shape()):
            if len(self[k][1].segments):
                labelled.append(k)
        return labelled

    def label_file_data(self, name: str | None = None) -> dict:
        """The classes as a label-set file (``model.labels``), each with its ``coco_id``; ``name``
        is the set's (the model's name in entries: ``<preset>:<name>``), by default the data's."""
        return {"name": name or self.labels.name, "source": f"categories of {self.json_path.name}",
                "classes": [{"id": i, "name": str(c["name"]), "isthing": bool(c["isthing"]), "coco_id": c["id"]}
                            for i, c in enumerate(self.categories)]}


def _coco_document_problem(document) -> str | None:
    """What keeps a parsed JSON from being COCO panoptic annotations, or None."""
    if not isinstance(document, dict):
        return "the top level is not an object with images, annotations and categories"
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            return f"it has no {key} list — is it a COCO panoptic JSON (not a detection/instances one)?"
    if not document["categories"]:
        return "categories is empty"
    names = set()
    for k, c in enumerate(document["categories"]):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
                and c["name"].strip() and c.get("isthing") in (0, 1, True, False)):
            return f"categories[{k}] needs an integer id, a name (not empty) and isthing 0 or 1"
        if c["name"] in names:
            return f"categories[{k}]: the name {c['name']!r} is used twice"
        names.add(c["name"])
    if len({c["id"] for c in document["categories"]}) != len(document["categories"]):
        return "two categories have one id"
    for k, image in enumerate(document["images"]):
        if not (isinstance(image, dict) and "id" in image):
            return f"images[{k}] has no id"
    for k, annotation in enumerate(document["annotations"]):
        if not (isinstance(annotation, dict) and "image_id" in annotation and isinstance(annotation.get("file_name"), str)
                and isinstance(annotation.get("segments_info"), list)):
            return f"annotations[{k}] needs image_id, file_name (its PNG) and segments_info"
        for s in annotation["segments_info"]:
            if not (isinstance(s, dict) and isinstance(s.get("id"), int) and isinstance(s.get("category_id"), int)):
                return f"annotations[{k}].segments_info: each segment needs an integer id and category_id"
    return None
