"""`python -m dlb.report`: the command line of dlb.analysis.report."""
from dlb.analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
