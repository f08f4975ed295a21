"""The node's one DICOM client: every association the node opens (results sent by C-STORE with Storage Commitment,
commitment reports to a requester) is opened here, on pynetdicom, whose process-wide switches are set once, when this
module is imported."""

from __future__ import annotations

from collections.abc import Sequence

from pynetdicom import AE, _config, build_role
from pynetdicom.association import Association

from dicomnode.base.tls import dicom_client_context
from dicomnode.config import NodeConfig

#: pynetdicom's documented STORE_SEND_CHUNKED_DATASET: a dataset sent by its path goes from the file as it is encoded
#: there, never decoded and encoded again (a thin-slice study's SR has some 7,000 content items).
_config.STORE_SEND_CHUNKED_DATASET = True


def open_association(
    config: NodeConfig,
    address: tuple[str, int],
    called_ae: str,
    contexts: Sequence[tuple[str, Sequence[str] | None]],
    tls: bool = False,
    scp_roles: Sequence[str] = (),
) -> Association:
    """An association from the node's AE title to ``called_ae`` at ``address`` (host, port), proposing each of
    ``contexts`` (abstract syntax, and its transfer syntaxes or None for pynetdicom's defaults), with DICOM TLS where
    ``tls`` and the SCP role offered for ``scp_roles``; every timeout is ``delivery.timeout_s``. The caller checks
    ``is_established`` and releases it."""
    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.delivery.timeout_s
    for abstract_syntax, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(abstract_syntax)
        else:
            ae.add_requested_context(abstract_syntax, list(syntaxes))
    tls_args = (dicom_client_context(config), None) if tls else None  # peers are identified by the CA, not by host name
    roles = [build_role(uid, scp_role=True) for uid in scp_roles] or None
    return ae.associate(address[0], address[1], ae_title=called_ae, tls_args=tls_args, ext_neg=roles)  # type: ignore[arg-type]
