"""The consumer runtime: fetch loop, dispatcher, settler, offsets and supervisor."""

from __future__ import annotations

from millstream.runtime.consumer import ConsumerRuntime, ConsumerState, ConsumerStats
from millstream.runtime.spec import ConsumerSpec

__all__ = ["ConsumerRuntime", "ConsumerSpec", "ConsumerState", "ConsumerStats"]
