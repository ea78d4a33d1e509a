"""`python -m dlb.plot`: the command line of dlb.analysis.plot."""
import sys

from dlb.analysis.plot import main

if __name__ == "__main__":
    sys.exit(main())
