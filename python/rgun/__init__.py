"""rgun: a pre-fork HTTP server for Python WSGI applications, written in Rust.

The server is the extension module ``rgun._rgun``; the ``rgun`` and ``rgunctl``
commands are console scripts (``rgun.__main__``). See README.md.
"""

from rgun._rgun import __version__

__all__ = ["__version__"]
