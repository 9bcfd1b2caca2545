"""Kafka-style partitioned append-only logs (topics).  See docs/logs.md."""

from .partition import Partition
from .topics import Topic, TopicRegistry

__all__ = ["Partition", "Topic", "TopicRegistry"]
