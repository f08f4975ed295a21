"""``python -m dicomnode``: the ``dicomnode`` command."""

from dicomnode.node.cli import main

main()
