"""The one exception family of segstream: every message is written for the user.

The CLI turns a ``SegstreamError`` into one line on stderr and a non-zero exit; any other exception
is a bug and keeps its traceback.
"""


class SegstreamError(Exception):
    """A problem the user can fix; ``str(error)`` says what is wrong and what to do."""

    exit_code = 1


class ConfigError(SegstreamError):
    """The pipeline description (YAML, overrides, environment) is invalid."""

    exit_code = 2


class SourceError(SegstreamError):
    """A video source cannot be opened or read."""


class SinkError(SegstreamError):
    """A sink (Redis, files) cannot be reached or written."""


class ReaderError(SinkError):
    """Redis refused a reader (``segstream.client``, ``segstream tail``): a command this user may
    not run, a stream its ACL key patterns exclude, a key that is no stream. ``permission``: the
    ACL rule to grant (``+xread``, ``~segstream:*:frames``), None when no permission is missing.
    A ``SinkError``, as readers raised before, so ``except SinkError`` catches it still."""

    def __init__(self, message: str, permission: str | None = None):
        super().__init__(message)
        self.permission = permission


class CheckpointError(SegstreamError):
    """A model checkpoint cannot be found, read, or does not fit the chosen preset."""


class TrainingDiverged(SegstreamError):
    """A training run's loss or gradients became NaN or infinite: it stops, and writes no weights."""


class StageError(SegstreamError):
    """A per-source stage named in a config (``stages:``) raised, or returned what the runtime
    cannot use: the run stops, the line names the stage, the source and the frame."""


class AdapterError(SegstreamError):
    """A model family's adapter (one of one's own, a plugin's) returned what the engine cannot
    use: class ids outside its label set, a label map of another shape, embeddings that do not
    match its segments."""


class FrameError(SegstreamError, ValueError, TypeError):
    """A frame given to segstream is not what it takes: ``adapter.segment()`` a list of H x W x 3
    uint8 RGB arrays with pixels (of a shape the model can window), ``draw_overlay`` such a frame
    of its result's size. A service maps it to its client's error (HTTP 400); still a
    ``ValueError`` and a ``TypeError``, as these were raised before."""


class WireFormatError(SegstreamError):
    """A Redis stream entry is not in a schema version this reader understands. ``entry_id``
    names the entry when a subscription read it (to acknowledge it in a consumer group)."""

    def __init__(self, message: str, entry_id: str | None = None):
        super().__init__(message)
        self.entry_id = entry_id


class IdleTimeout(SegstreamError):
    """A wait given a limit saw nothing for that long (``segstream tail --follow --idle-timeout``);
    124, the status of ``timeout(1)`` when its time runs out."""

    exit_code = 124


class ResourceLimit(SegstreamError):
    """The system refused a thread, a process or memory: a limit set on this process or its
    container, not a fault of the input or the config."""


# What to raise when a thread or process could not be started; Python and FFmpeg say only EAGAIN.
THREAD_LIMIT_HINT = ("a process/thread limit? — raise `ulimit -u`, the container's pids limit or `ulimit -v`, "
                     "or run fewer sources")


def thread_start_failed(error: BaseException) -> bool:
    """Whether ``error`` is Python's refusal to start a thread (``RuntimeError: can't start new thread``)."""
    return isinstance(error, RuntimeError) and "can't start new thread" in str(error)
