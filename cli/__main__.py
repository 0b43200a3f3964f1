"""``python -m lobstream.cli``: the ``lobstream`` command."""

from lobstream.cli import main

main()
