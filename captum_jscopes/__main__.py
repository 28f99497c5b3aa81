"""``python -m captum_jscopes ...``: the same as the ``jscopes`` command."""

import sys

from captum_jscopes.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
