"""`python -m workers worker|scheduler`: the same entry points as `bookwire worker|scheduler`."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
