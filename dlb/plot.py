"""`python -m dlb.plot`: the command line of dlb.analysis.plot."""
from dlb.analysis.plot import main

if __name__ == "__main__":
    raise SystemExit(main())
