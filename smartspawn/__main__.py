"""`python -m smartspawn status`: the same as the `smartspawn` console script."""
import sys

from gunicorn_smartspawn.status import main

sys.exit(main())
