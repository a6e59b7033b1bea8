"""The ``rgun`` and ``rgunctl`` console scripts, and ``python -m rgun``.

Both hand ``sys.argv`` to the extension module and exit with its status. ``rgun``
also hands over ``sys.executable``: the master re-executes that interpreter with this
entry point for a USR2 upgrade or a ``--preload`` reload, as Gunicorn does.
Absolute imports only: a re-execution may run this file as a script.
"""

import sys

from rgun import _rgun


def main():
    sys.exit(_rgun.serve(sys.executable, sys.argv))


def rgunctl():
    sys.exit(_rgun.rgunctl(sys.argv))


if __name__ == "__main__":
    main()
