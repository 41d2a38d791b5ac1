# segstream: EoMT segmentation of video streams, published to Redis Streams.
# GPU at run time comes from the NVIDIA container toolkit (see docker-compose.yml); the PyPI
# torch wheels bring their own CUDA libraries, and PyAV's wheels their own FFmpeg.
FROM python:3.11-slim

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
COPY README.md ./
RUN pip install --constraint constraints.txt .

RUN useradd --system --create-home --uid 10001 segstream
USER segstream

ENTRYPOINT ["segstream"]
CMD ["--help"]
