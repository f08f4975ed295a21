"""Which studies a receiver's open associations are sending, kept in the database so that completion on any
receiver of a cluster waits for them."""

from __future__ import annotations

import threading

from dicomnode.store import Store


class OpenAssociations:
    """The open associations of one receiver and the studies each has sent; a row is written once per association
    and study, and the receiver's rows are dropped when it starts."""

    def __init__(self, store: Store, receiver: str) -> None:
        self.store, self.receiver = store, receiver
        self._lock = threading.Lock()
        self._seen: dict[int, set[str]] = {}
        store.forget_associations(receiver)

    def touched(self, assoc_id: int, study_uid: str) -> None:
        """Association ``assoc_id`` sent an instance of ``study_uid``."""
        with self._lock:
            if study_uid in self._seen.get(assoc_id, set()):
                return
        self.store.association_sent(self.receiver, str(assoc_id), study_uid)
        with self._lock:
            self._seen.setdefault(assoc_id, set()).add(study_uid)

    def closed(self, assoc_id: int, released: bool) -> None:
        """Association ``assoc_id`` ended, released by its peer or not."""
        with self._lock:
            if self._seen.pop(assoc_id, None) is None:
                return
        self.store.association_closed(self.receiver, str(assoc_id), released)
