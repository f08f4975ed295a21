"""A pynetdicom C-STORE SCP that keeps nothing: the ceiling of any receiver built on pynetdicom, for ``ingest``.

python -m benchmarks.bare_scp PORT
"""

from __future__ import annotations

import sys

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.status import Status


def main() -> None:
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 0  # as the node: unlimited
    ae.require_called_aet = False
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, lambda event: Status.SUCCESS)])


if __name__ == "__main__":
    main()
