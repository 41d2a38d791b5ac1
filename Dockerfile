# segstream: EoMT segmentation of video streams, published to Redis Streams.
# GPU at run time comes from the NVIDIA container toolkit (see docker-compose.yml); the PyPI
# torch wheels bring their own CUDA libraries, and PyAV's wheels their own FFmpeg.
# Debian 12 named, not the floating tag: a rebuild gets the same system (its ffmpeg 5.1, below).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/segstream

# Dependencies in their own layer: editing the code does not reinstall torch.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --constraint constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY segstream ./segstream
COPY connectors ./connectors
COPY models ./models
COPY pipeline ./pipeline
# package data too: `segstream demo` runs in the image (the demo config and its clip)
COPY configs ./configs
COPY samples/demo.mp4 ./samples/demo.mp4
COPY README.md ./
RUN pip install --constraint constraints.txt .

# tini as PID 1: it passes SIGTERM on to segstream (which drains and exits) and reaps children;
# ffmpeg receives SRT and RIST streams, which the FFmpeg in PyAV's wheels lacks
RUN apt-get update && apt-get install -y --no-install-recommends tini ffmpeg && rm -rf /var/lib/apt/lists/*

# A numeric user: Kubernetes' runAsNonRoot can check a number only (a name is refused). Group 0
# may write runs/, as OpenShift runs images as a random user in group 0.
RUN useradd --system --create-home --uid 10001 --gid 0 segstream \
    && mkdir /opt/segstream/runs && chown 10001:0 /opt/segstream/runs && chmod g=u /opt/segstream/runs
USER 10001:0
# relative output folders (runs/out, runs/preview, runs/batch) go here: mount a volume on it
VOLUME /opt/segstream/runs

# JSON log lines for the container's log driver; metrics and health on ops.http (see the config)
# TINI_SUBREAPER: tini where it is not PID 1 (a pod sharing its process namespace, `docker run --init`)
# reaps as a subreaper, without three lines of warning (not JSON) on standard error
ENV SEGSTREAM_LOG_FORMAT=json \
    SEGSTREAM_HEALTH_URL=http://127.0.0.1:9108/healthz \
    TINI_SUBREAPER=1
EXPOSE 9108
# /healthz answers 503 once a stage has made no progress for ops.stall_after_s
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SEGSTREAM_HEALTH_URL'], timeout=4)"]
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/bin/tini", "--", "segstream"]
CMD ["--help"]
