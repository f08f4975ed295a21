"""The DICOM Conformance Statement says what the receiver accepts: every SOP class it lists as provided (SCP) and
every transfer syntax it lists is accepted by the running receiver, and a class or syntax it does not list is not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from dicomnode.intake.receive import ACCEPTED_CONTEXTS
from dicomnode.net.dimse import STORAGE_COMMITMENT
from tests.peers import receiver_in_process

STATEMENT = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
_UID = r"[0-9]+(?:\.[0-9]+)+"


def _section(title: str) -> str:
    text = STATEMENT.read_text()
    start = text.index(f"## {title}") if f"## {title}" in text else text.index(f"### {title}")
    following = re.search(r"\n##+ ", text[start + 3 :])
    return text[start : start + 3 + following.start()] if following else text[start:]


def _rows(section: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines() if line.startswith("| ") and "---" not in line]


def listed_scp_classes() -> set[str]:
    """The UIDs of section 1's table whose provider (SCP) column says yes."""
    return {row[1] for row in _rows(_section("1. Overview")) if re.fullmatch(_UID, row[1]) and row[3].startswith("yes")}


def listed_storage_syntaxes() -> set[str]:
    """The UIDs of section 2.2's table of transfer syntaxes for the storage classes."""
    return {row[1] for row in _rows(_section("2.2 Presentation contexts accepted")) if re.fullmatch(_UID, row[1])}


def test_the_statement_lists_what_the_receiver_is_configured_to_accept() -> None:
    assert listed_scp_classes() == set(ACCEPTED_CONTEXTS)
    storage = [set(syntaxes) for uid, syntaxes in ACCEPTED_CONTEXTS.items() if uid not in (Verification, STORAGE_COMMITMENT)]
    assert storage and all(syntaxes == listed_storage_syntaxes() for syntaxes in storage)
    assert {ImplicitVRLittleEndian, ExplicitVRLittleEndian} == set(ACCEPTED_CONTEXTS[Verification]) == set(ACCEPTED_CONTEXTS[STORAGE_COMMITMENT])


@pytest.mark.parametrize("part", ["classes", "syntaxes"])
def test_a_real_association_gets_exactly_what_the_statement_lists(tmp_path: Path, part: str) -> None:
    """pynetdicom proposes every listed class (in the uncompressed syntaxes), or CT Image Storage in each listed
    transfer syntax, as contexts of its own, plus one the statement does not list; the receiver accepts exactly the
    listed ones."""
    if part == "classes":
        listed = sorted(listed_scp_classes())
        contexts = [build_context(uid, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]) for uid in [*listed, MRImageStorage]]
    else:
        listed = sorted(listed_storage_syntaxes())
        contexts = [build_context(CTImageStorage, [uid]) for uid in [*listed, "1.2.840.10008.1.2.4.1000"]]
    with receiver_in_process(tmp_path) as (config, _):
        ae = AE(ae_title="CONFORMANCE")
        ae.requested_contexts = contexts
        association = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
        assert association.is_established
        try:
            accepted = association.accepted_contexts
            rejected = association.rejected_contexts
        finally:
            association.release()
    if part == "classes":
        assert {c.abstract_syntax for c in accepted} == set(listed)
        assert [c.abstract_syntax for c in rejected] == [MRImageStorage]
    else:
        assert {c.transfer_syntax[0] for c in accepted} == set(listed)
        assert [c.transfer_syntax[0] for c in rejected] == ["1.2.840.10008.1.2.4.1000"]
