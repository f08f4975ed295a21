"""TLS contexts from the node's ``tls`` settings, one place for all three: the receiver's (it asks callers for a
certificate signed by ``ca_certificates`` where that is set), a DICOM destination's (peers are known by that CA, not
by host name), and a DICOMweb destination's (HTTPS as browsers check it, host name included)."""

from __future__ import annotations

import ssl

from dicomnode.config import NodeConfig


def _ca(config: NodeConfig) -> str | None:
    return str(config.path(config.tls.ca_certificates)) if config.tls.ca_certificates else None


def receiver_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The receiver's context where TLS is enabled; callers must present a certificate where a CA is configured."""
    tls = config.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_ca(config))
    context.verify_mode = ssl.CERT_REQUIRED if tls.ca_certificates else ssl.CERT_NONE
    context.load_cert_chain(config.path(tls.certificate), config.path(tls.private_key))
    return context


def dicom_client_context(config: NodeConfig) -> ssl.SSLContext:
    """A DICOM destination's context: its certificate checked against the CA, not its host name; the node's own
    certificate presented where one is configured."""
    tls = config.tls
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_ca(config))
    context.check_hostname = False
    if tls.certificate:
        context.load_cert_chain(config.path(tls.certificate), config.path(tls.private_key))
    return context


def https_context(config: NodeConfig) -> ssl.SSLContext:
    """A DICOMweb destination's context: the usual HTTPS checks, with the configured CA where there is one."""
    return ssl.create_default_context(cafile=_ca(config))
