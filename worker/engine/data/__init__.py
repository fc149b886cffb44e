"""The engine's dataset layer: URIs in, device-ready splits and deterministic batches out.

``load_dataset`` reads any supported URI (see ``loading.ARRAY_READERS`` and ``STREAMED``) into a
:class:`Dataset` whose training batches are a pure function of (seed, step), so resumed runs
replay exactly the same data without saving any loader state.
"""

from __future__ import annotations

from worker.engine.data.api import BatchSource, DataConfig, Dataset, Split
from worker.engine.data.loading import load_dataset
from worker.engine.data.uris import resolve_path

__all__ = ["BatchSource", "DataConfig", "Dataset", "Split", "load_dataset", "resolve_path"]
