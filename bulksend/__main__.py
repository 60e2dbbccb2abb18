"""``python -m bulksend``: the command line."""

from __future__ import annotations

from bulksend.cli import main

if __name__ == "__main__":
    main(prog_name="bulksend")
