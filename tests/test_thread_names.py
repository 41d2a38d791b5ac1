"""segstream's threads carry their names into the OS, where top -H, ps -L, gdb and perf see them."""

import threading
from pathlib import Path

from segstream.connectors.file_source import FileSource
from segstream.connectors.threads import NamedThread, os_thread_name
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink


def _os_threads() -> dict[str, str]:
    """This process's threads now: their OS names by thread id."""
    names = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            names[task.name] = (task / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile (ENOENT or ESRCH)
            pass
    return names


def test_a_named_thread_takes_its_name_without_the_prefix_cut_to_what_linux_keeps():
    seen = {}

    def record():
        seen["comm"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    thread = NamedThread(target=record, name="segstream-decode-loading-dock-east")
    thread.start()
    thread.join()
    assert seen["comm"] == "decode-loading-" == os_thread_name(thread.name).decode()
    assert os_thread_name("segstream-decode-caméra") == "decode-caméra".encode()[:15]
    assert os_thread_name("segstream-decode-ééééééé").decode()  # never cut inside a character


class _NamesSink(CollectingSink):
    """Notes the process's OS thread names while the run is publishing."""

    def publish(self, result):
        # early, while the 40-frame clip is still being decoded: at frame 20 a CI run found the decode
        # thread already ended (every frame decoded and queued behind the model)
        if result.index == 2:
            self.threads = _os_threads()
        super().publish(result)


def test_a_runs_threads_show_in_the_os_by_their_stage(clip, segmenter):
    sink = _NamesSink()
    before = _os_threads()
    Runtime([FileSource("dock", str(clip))], segmenter, [sink], batch_size=2, progress=None).run()
    # the run's own threads, by id: a thread of the same name another test left ending is not this run's
    started = {name for tid, name in sink.threads.items() if tid not in before}
    assert {"model", "decode-dock", "post", "stage", "publish"} <= started
