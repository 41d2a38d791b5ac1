"""segstream: streaming video segmentation, published to Redis Streams."""

__version__ = "0.1.0"
