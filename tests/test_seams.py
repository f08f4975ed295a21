"""Where the node grows: every destination protocol has its settings model and one sender, every output format one
registered writer, and the log names each destination as its protocol reaches it."""

from __future__ import annotations

from pathlib import Path

from dicomnode.config import DimseDestination, StowRsDestination, load_config
from dicomnode.options import OutputFormat, Protocol
from dicomnode.outbound.send import SENDERS
from dicomnode.results.write import ALWAYS, NEEDS_PIXELS, WRITERS


def test_every_protocol_reads_into_its_own_model_and_has_one_sender(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "destinations:\n"
        "  - {name: pacs, ae_title: PACS, host: h, port: 104}\n"  # no protocol: DIMSE, as before the union
        "  - {name: web, protocol: stow-rs, url: 'https://pacs.example.org/dicom-web'}\n"
    )
    pacs, web = load_config(path).destinations
    assert isinstance(pacs, DimseDestination) and isinstance(web, StowRsDestination)
    assert set(SENDERS) == set(Protocol) == {Protocol(d.protocol) for d in (pacs, web)}


def test_every_output_format_has_a_registered_writer() -> None:
    assert set(WRITERS) == set(OutputFormat)
    assert list(WRITERS)[:2] == list(ALWAYS)  # the SR refers to the SEG, so the SEG is written first
    assert NEEDS_PIXELS <= set(WRITERS)


def test_the_log_names_a_destination_by_how_it_is_reached() -> None:
    assert DimseDestination("pacs", "PACS", "10.0.0.5", 104).describe() == "pacs (PACS@10.0.0.5:104)"
    assert StowRsDestination("web", url="https://pacs.example.org/dicom-web").describe() == "web (https://pacs.example.org/dicom-web)"
