"""``python -m dsdk.worker``: the long-lived worker process of a DSDK job (see :mod:`dsdk._worker`)."""

import sys

from dsdk._worker import main

if __name__ == "__main__":
    sys.exit(main())
