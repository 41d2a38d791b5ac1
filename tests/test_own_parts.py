"""Sources, stages, sinks and events of one's own in a Runtime: a mistake in one is named, in the
user's terms, where it is made (found by a probe embedding segstream as a library: torch's
errors from inside the model, AttributeErrors after the model had run, a stop() that hung)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import numpy as np
import pytest

from segstream.connectors.file_source import FileSource
from segstream.connectors.frames import Frame
from segstream.models.results import Event
from segstream.pipeline import runtime as runtime_module
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink


class ListSource:
    """Yields a frame per image (numbered from 0; an image may be anything) and anything else
    in ``items`` as it is, then calls ``then()`` if given."""

    live = False

    def __init__(self, name: str, items: list, then=None):
        self.name, self.items, self.then = name, items, then

    def frames(self):
        for i, item in enumerate(self.items):
            yield item if isinstance(item, (Frame, str)) else Frame(self.name, i, item, None, None, None, time.time())
        if self.then is not None:
            self.then()

    def close(self):
        pass


GOOD = np.zeros((48, 64, 3), np.uint8)


def stop_after_the_first_result(runtime: Runtime, sink: CollectingSink, join_s: float):
    """Run on a thread, stop once the sink has a result; the thread and ``{"report": ...}``."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(report=runtime.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not sink.results and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.stop()
    thread.join(join_s)
    return thread, outcome


@pytest.mark.parametrize("bad, says", [
    (np.zeros((48, 64, 3), np.float32), "frame 2 has a float32 image of shape (48, 64, 3), not H x W x 3 uint8 RGB"),
    (np.zeros((48, 64), np.uint8), "frame 2 has a uint8 image of shape (48, 64), not H x W x 3 uint8 RGB"),
    (np.zeros((48, 64, 4), np.uint8), "frame 2 has a uint8 image of shape (48, 64, 4), not H x W x 3 uint8 RGB"),
    (np.zeros((0, 64, 3), np.uint8), "frame 2 has a uint8 image of shape (0, 64, 3), not H x W x 3 uint8 RGB"),
    (None, "frame 2 has an image of type NoneType, not a numpy array"),
    (Frame("odd", None, GOOD, None, None, None, 0.0), "frame None has index None, not an int"),
    ("a path", "frame 2 is a str, not a segstream.Frame"),
])
def test_a_bad_frame_fails_only_its_own_source_saying_which_frame_and_what_is_wrong(clip, segmenter, bad, says):
    sink = CollectingSink()
    odd = ListSource("odd", [GOOD, GOOD, bad])
    report = Runtime([FileSource("cam", str(clip)), odd], segmenter, [sink], required=["cam"], progress=None).run()
    assert len(sink.indices("cam")) == 40  # the other source went on to its end
    assert report.failed == {"odd": says}
    assert sink.indices("odd") == [0, 1]


def test_a_source_whose_frames_ignores_close_does_not_hang_stop(segmenter, monkeypatch):
    monkeypatch.setattr(runtime_module, "SOURCE_CLOSE_GRACE_S", 0.5)
    forever = threading.Event()
    stuck = ListSource("stuck", [GOOD], then=forever.wait)  # a camera read that close() cannot end
    sink = CollectingSink()
    runtime = Runtime([stuck], segmenter, [sink], publish_states=True, progress=None)
    thread, outcome = stop_after_the_first_result(runtime, sink, join_s=5)
    try:
        assert not thread.is_alive(), "stop() waited for a source that never returns"
        source = outcome["report"].sources["stuck"]
        assert source.published == 1 and source.state == "ended"
        assert "did not return within 0.5 s of close() and was left behind" in source.reason
        assert [e.data.get("state") for e in sink.events if e.kind == "state"][-1] == "ended"
    finally:
        forever.set()


class NoPoll(CollectingSink):
    poll = None


class Counting:
    def __init__(self, source: str):
        self.source = source

    def process(self, result):
        return result


def test_a_sink_or_stage_of_the_wrong_shape_is_refused_when_the_runtime_is_built(segmenter):
    with pytest.raises(TypeError, match=r"sink 'collect' lacks poll: a sink has publish, publish_event, poll, flush, "
                                        r"close \(segstream.Sink\)"):
        Runtime([ListSource("a", [GOOD])], segmenter, [NoPoll()])
    with pytest.raises(TypeError, match=r"stages takes factories.*got 'Counting' \(pass lambda source: Counting\(...\)\)"):
        Runtime([ListSource("a", [GOOD])], segmenter, [CollectingSink()], stages=[Counting("a")])
    # a class is a factory: called with the source's name, it returns a stage
    report = Runtime([ListSource("a", [GOOD])], segmenter, [CollectingSink()], stages=[Counting], progress=None).run()
    assert report.published == 1


class Forgetful:
    def __init__(self, source: str):
        pass

    def process(self, result):
        result.segments = result.segments  # ... and forgets to return it


def test_a_stage_that_returns_nothing_is_named_with_the_frame(segmenter):
    with pytest.raises(TypeError, match=r"Forgetful.process returned NoneType for frame 0 of a: a per-source stage "
                                        r"returns the result it was given"):
        Runtime([ListSource("a", [GOOD])], segmenter, [CollectingSink()], stages=[Forgetful], progress=None).run()


class SetEvent:
    def __init__(self, source: str):
        pass

    def process(self, result):
        result.events.append(Event(result.source, "seen", time.time(), {"classes": {"square"}}))
        return result


def test_an_event_whose_data_is_not_json_is_named(segmenter, tmp_path):
    from segstream.connectors.files_sink import FilesSink

    with pytest.raises(TypeError, match=r"event 'seen' of source 'a': its data is not JSON \(.*set.*\) — use numbers"):
        Runtime([ListSource("a", [GOOD])], segmenter, [FilesSink(tmp_path)], stages=[SetEvent], progress=None).run()


def test_an_event_for_a_source_the_run_lacks_is_refused(segmenter):
    runtime = Runtime([ListSource("a", [GOOD])], segmenter, [CollectingSink()], progress=None)
    with pytest.raises(ValueError, match=r"event 'hello' names source 'b', which this run does not have \(its sources: a\)"):
        runtime.emit(Event("b", "hello", time.time(), {}))
    runtime.emit(dataclasses.replace(Event("a", "hello", time.time(), {})))


def test_a_source_waiting_for_queue_room_behind_a_slow_model_is_not_left_behind(monkeypatch):
    # found in review: the grace also ran out for a healthy source waiting for queue room behind a
    # model slower than it, which then lost a frame silently
    from tests.conftest import ColourSegmenter

    monkeypatch.setattr(runtime_module, "SOURCE_CLOSE_GRACE_S", 0.3)
    sink = CollectingSink()
    runtime = Runtime([ListSource("a", [GOOD] * 8)], ColourSegmenter(delay_s=0.5), [sink], batch_size=1,
                      queue_size=2, progress=None)
    _, outcome = stop_after_the_first_result(runtime, sink, join_s=20)
    source = outcome["report"].sources["a"]
    assert source.state == "ended" and "left behind" not in source.reason
    assert source.decoded == source.published + source.dropped and source.abandoned == 0


class Finishing:
    def __init__(self, source: str):
        self.reasons = FINISHED

    def process(self, result):
        return result

    def finish(self, reason):  # as the README documents it: no default
        self.reasons.append(reason)
        return []


FINISHED: list = []


def test_a_stage_s_finish_is_told_why_its_source_ended(segmenter):
    FINISHED.clear()
    Runtime([ListSource("a", [GOOD])], segmenter, [CollectingSink()], stages=[Finishing], progress=None).run()
    assert FINISHED == ["end"]


class Connecting:
    """frames() as a plain function that connects before it returns its iterator, or a generator
    whose cleanup blocks; neither heeds close()."""

    live = False

    def __init__(self, name: str, where: str, forever: threading.Event):
        self.name, self.where, self.forever = name, where, forever

    def frames(self):
        if self.where == "connect":
            self.forever.wait()
            return iter(())
        return self._frames()

    def _frames(self):
        try:
            for i in itertools.count():  # (indices that increase: one repeated fails the source)
                yield Frame(self.name, i, GOOD, None, None, None, time.time())
                time.sleep(0.02)
        finally:
            self.forever.wait()  # a release() that hangs

    def close(self):
        pass


@pytest.mark.parametrize("where", ["connect", "cleanup"])
def test_a_source_blocked_before_its_first_frame_or_in_its_cleanup_does_not_hang_stop(segmenter, monkeypatch, where):
    # found in review: only a thread inside next() was left behind
    monkeypatch.setattr(runtime_module, "SOURCE_CLOSE_GRACE_S", 0.3)
    forever = threading.Event()
    runtime = Runtime([Connecting("a", where, forever)], segmenter, [CollectingSink()], progress=None)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(report=runtime.run()), daemon=True)
    thread.start()
    time.sleep(0.5)
    runtime.stop()
    thread.join(5)
    try:
        assert not thread.is_alive(), "stop() waited for a source that never returns"
        assert "was left behind" in outcome["report"].sources["a"].reason
    finally:
        forever.set()


def test_a_frame_the_model_cannot_take_fails_only_its_own_source(clip):
    # found in review: a semantic model's refusal of a 15 x 1000 frame (67 windows) stopped every
    # source, with a traceback
    from segstream.models.processing import InputGeometry
    from tests.conftest import ColourSegmenter

    class Windowed(ColourSegmenter):
        geometry = InputGeometry(64, windows=True)

    sink = CollectingSink()
    odd = ListSource("odd", [GOOD, np.zeros((15, 1000, 3), np.uint8)])
    report = Runtime([FileSource("cam", str(clip)), odd], Windowed(), [sink], required=["cam"], progress=None).run()
    assert len(sink.indices("cam")) == 40 and sink.indices("odd") == [0]
    assert report.failed == {"odd": "frame 1 cannot be segmented: a 1000x15 frame would need 67 windows of 64 x 64 for "
                                    "a semantic model (at most 32): crop it nearer to square first"}


def test_a_factory_s_options_are_told_as_python_would_every_problem_at_once():
    # found reviewing: an option naming what the source's name fills was called unknown, and a positional-only
    # parameter's absence went unsaid
    from segstream.pipeline.own_parts import _call_problem

    def camera(name, fps=1, *, url):
        return name

    def strict(name, /, exposure):
        return name

    def one(source):
        return source

    assert _call_problem(camera, ("cam1",), {"name": "x", "url": 1}) == "multiple values for argument 'name'"
    assert _call_problem(camera, ("cam1",), {"fsp": 5}) == (
        "got an unexpected keyword argument 'fsp' (option 'fsp': did you mean 'fps'?); missing a required "
        "argument: 'url'")
    assert _call_problem(strict, ("cam1",), {"exposur": 1}) == (
        "got an unexpected keyword argument 'exposur' (option 'exposur': did you mean 'exposure'?); missing a "
        "required argument: 'exposure'")
    assert _call_problem(one, ("cam1", "extra"), {"q": 1}) == "too many positional arguments"
    assert _call_problem(camera, ("cam1",), {"url": "rtsp://x"}) is None
