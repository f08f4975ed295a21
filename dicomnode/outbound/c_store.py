"""Results sent to a DICOM AE by C-STORE over one association, and where the destination asks for it, their Storage
Commitment requested on the same association (PS3.4 J.3.2)."""

from __future__ import annotations

from collections.abc import Sequence

from pynetdicom.sop_class import StorageCommitmentPushModel
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicomnode.config import Destination, DimseDestination, NodeConfig
from dicomnode.outbound.commitment import request_commitment
from dicomnode.outbound.dicom_client import open_association
from dicomnode.outbound.outgoing import Committing, Outgoing, SendOutcome


def send(
    config: NodeConfig, destination: Destination, datasets: Sequence[Outgoing], committing: Committing | None = None
) -> tuple[list[SendOutcome], str | None]:
    """Send result files over one association; one outcome per file, and, for a destination with
    ``storage_commitment``, the Transaction UID of the commitment it was asked for those it stored (None if none),
    after ``committing`` recorded it (the report may come before the request's answer).

    Each dataset is sent from its file as it is encoded there (``dicom_client``); the presentation context proposed
    for each is its file's own transfer syntax."""
    if not isinstance(destination, DimseDestination):
        raise TypeError(f"destination: {destination.name} is not a DIMSE destination")
    contexts: list[tuple[str, Sequence[str] | None]] = [(sop_class, [syntax]) for sop_class, syntax in {(ds.sop_class, ds.transfer_syntax) for ds in datasets}]
    if destination.storage_commitment:
        contexts.append((StorageCommitmentPushModel, None))
    assoc = open_association(config, (destination.host, destination.port), destination.ae_title, contexts, tls=destination.tls)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
        return [SendOutcome(False, reason)] * len(datasets), None
    outcomes, transaction = [], None
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds.path)
            code = getattr(status, "Status", None)
            if code is None:
                outcomes.append(SendOutcome(False, "no C-STORE response (timeout or abort)"))
            else:
                category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), "no meaning defined"))
                ok = category in (STATUS_SUCCESS, STATUS_WARNING)  # a warning (e.g. coercion) still means stored
                outcomes.append(SendOutcome(ok, f"status 0x{code:04X} ({': '.join(filter(None, (category, meaning)))})"))
        stored = [n for n, outcome in enumerate(outcomes) if outcome.ok]
        if destination.storage_commitment and stored:
            transaction = request_commitment(assoc, datasets, stored, outcomes, committing)
    finally:
        assoc.release()
    return outcomes, transaction
