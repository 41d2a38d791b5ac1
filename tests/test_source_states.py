"""What a source's states say in the log: a camera that stays down all night is not a thousand warnings."""

import logging

import pytest

from segstream.models.results import Event
from segstream.pipeline.metrics import RunMetrics
from segstream.pipeline.source_states import SourceStates


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def said(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def records():
    logger = logging.getLogger("segstream.sources")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)  # the CLI's logging may have stopped propagation to the root
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


REFUSED = "cannot open 'rtsp://cam/live': Connection refused"


def test_a_camera_down_all_night_warns_once_then_every_five_minutes_and_says_its_outage_when_back(records):
    # Found soaking: a dead camera logged a warning per reconnect attempt, ~1000 a night
    clock, events = _Clock(), []
    states = SourceStates(RunMetrics(["cam"]), events.append, clock=clock)
    states.enter("cam", "connecting", "opening 'rtsp://cam/live'")
    clock.now += 2
    states.enter("cam", "streaming", "first frame 640x480 h264")
    clock.now += 600
    states.enter("cam", "stalled", "no data for 5 s (read timeout)")
    for _ in range(60):  # 30 s apart: 30 min down
        states.enter("cam", "reconnecting", REFUSED)
        clock.now += 30
    states.enter("cam", "streaming", "first frame 640x480 h264")

    assert records.said() == [
        "source cam stalled: no data for 5 s (read timeout)",
        f"source cam reconnecting: {REFUSED}",
        f"source cam still reconnecting: 11 attempts in 5.0 min, last: {REFUSED}",
        f"source cam still reconnecting: 21 attempts in 10.0 min, last: {REFUSED}",
        f"source cam still reconnecting: 31 attempts in 15.0 min, last: {REFUSED}",
        f"source cam still reconnecting: 41 attempts in 20.0 min, last: {REFUSED}",
        f"source cam still reconnecting: 51 attempts in 25.0 min, last: {REFUSED}",
    ]
    infos = records.said(logging.INFO)
    assert infos[-1] == "source cam streaming: first frame 640x480 h264 (after 30.0 min down, 60 reconnect attempts)"
    assert len(records.said(logging.DEBUG)) - len(infos) == 59  # every attempt is still in the debug log
    reconnects = [e for e in events if isinstance(e, Event) and e.data["state"] == "reconnecting"]
    assert len(reconnects) == 60 and reconnects[-1].data["reconnects"] == 60  # and every one an event


def test_a_new_reason_for_a_camera_still_down_is_a_warning_of_its_own(records):
    clock = _Clock()
    states = SourceStates(RunMetrics(["cam"]), None, clock=clock)
    states.enter("cam", "connecting", "opening 'rtsp://cam/live'")
    for reason in (REFUSED, REFUSED, "no data for 5 s (read timeout)", "no data for 5 s (read timeout)", REFUSED):
        clock.now += 10
        states.enter("cam", "reconnecting", reason)
    clock.now += 10
    states.enter("cam", "streaming", "first frame 640x480 h264")
    assert records.said() == [
        f"source cam reconnecting: {REFUSED}",
        "source cam reconnecting: no data for 5 s (read timeout)",
        f"source cam reconnecting: {REFUSED}",
    ]
    # down since it began connecting: it never came up before
    assert records.said(logging.INFO)[-1] == (
        "source cam streaming: first frame 640x480 h264 (after 1.0 min down, 5 reconnect attempts)")


def test_each_outage_of_a_camera_starts_its_count_anew(records):
    clock = _Clock()
    states = SourceStates(RunMetrics(["cam"]), None, clock=clock)
    states.enter("cam", "streaming", "first frame 640x480 h264")
    for _ in range(2):
        clock.now += 100
        states.enter("cam", "reconnecting", REFUSED)
        clock.now += 5
        states.enter("cam", "reconnecting", REFUSED)
        clock.now += 5
        states.enter("cam", "streaming", "first frame 640x480 h264")
    assert records.said() == [f"source cam reconnecting: {REFUSED}"] * 2
    assert records.said(logging.INFO)[-1] == (
        "source cam streaming: first frame 640x480 h264 (after 10 s down, 2 reconnect attempts)")


def test_an_outage_that_began_with_a_stall_counts_from_the_last_frame_not_from_the_stall(records):
    # Found probing a drone's UDP link: out 12 s, "after 8 s down" (the 5 s read timeout before the stall
    # was not counted), while the run's summary and the frames' timestamps said 12-13 s
    clock = _Clock()
    states = SourceStates(RunMetrics(["cam"]), None, clock=clock)
    states.enter("cam", "streaming", "first frame 640x480 h264")
    clock.now += 100  # the last frame; the stall is told a timeout later
    clock.now += 5
    states.enter("cam", "stalled", "no data for 5 s (read timeout)", {"phase": "read", "timeout_s": 5.0})
    clock.now += 3
    states.enter("cam", "reconnecting", REFUSED)
    clock.now += 4
    states.enter("cam", "streaming", "first frame 640x480 h264")
    assert records.said(logging.INFO)[-1] == (
        "source cam streaming: first frame 640x480 h264 (after 12 s down, 1 reconnect attempt)")


def test_a_file_that_ends_while_the_run_goes_on_logs_its_end_the_last_one_leaves_it_to_the_summary(records, tmp_path):
    # found probing an archive run: file sources logged no state at all, though README says each source's is logged
    from segstream.connectors.file_source import FileSource
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter, encode_clip

    short, long = encode_clip(tmp_path / "short.mp4", frames=5), encode_clip(tmp_path / "long.mp4", frames=40)
    Runtime([FileSource("short", str(short)), FileSource("long", str(long))], ColourSegmenter(), [],
            progress=None).run()
    info = [(r.getMessage(), r.source) for r in records.records if r.levelno >= logging.INFO]
    assert info == [("source short ended: end of input", "short")], info  # not connecting, streaming: no news
    assert "source long ended: end of input" in [r.getMessage() for r in records.records]  # at debug level
