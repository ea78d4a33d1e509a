"""`python -m dlb.report`: the command line of dlb.analysis.report."""
import sys

from dlb.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
