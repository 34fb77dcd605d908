"""`python -m smartspawn ...`: the same as the `smartspawn` console script (cli.py)."""
import sys

from gunicorn_smartspawn.cli.main import main

sys.exit(main())
