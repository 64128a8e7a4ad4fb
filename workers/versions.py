"""The model versions a worker process holds besides the one ``current`` names: a small LRU.

Every task names the version it must run (``mv`` in its spec, from the rollout plan). A process keeps
the version it loaded at start (``workers.runtime``) and up to ``INFERPOOL_MODEL_CACHE_VERSIONS - 1``
others, loading a missing one on demand with the same checks (a file inside the model directory whose
sha256 matches its manifest). It never substitutes another version: a version that cannot be loaded
fails the task with the reason (:class:`~inferpool.errors.ModelError`), and the caller is told.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from inferpool.compiled import served_runtime
from inferpool.model_store import load_model
from inferpool.settings import get_settings
from workers.runtime import Runtime

logger = logging.getLogger(__name__)


class VersionCache:
    def __init__(self) -> None:
        self._loaded: OrderedDict[str, Runtime] = OrderedDict()
        self._lock = threading.Lock()

    def runtime_for(self, base: Runtime, version: str | None) -> Runtime:
        """The runtime of ``version`` (``base``, the process's own, when it is that version or none is named)."""
        if not version or version == base.manifest.version:
            return base
        with self._lock:
            rt = self._loaded.get(version)
            if rt is not None:
                self._loaded.move_to_end(version)
                return rt
            s = get_settings()
            model, manifest = load_model(s.model_dir, version, runtime=s.model_runtime)
            rt = Runtime(model, manifest, base.redis, served_runtime(manifest.runtime, s.model_runtime))
            self._loaded[version] = rt
            # The process's own version counts as one of the cache's places.
            while len(self._loaded) > max(s.model_cache_versions - 1, 1):
                gone, _ = self._loaded.popitem(last=False)
                logger.info("model version %s unloaded (least recently used)", gone)
            logger.info("model version %s loaded on demand (%s)", version, rt.runtime)
            return rt

    def held(self) -> list[str]:
        return list(self._loaded)


cache = VersionCache()
