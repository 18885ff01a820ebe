"""`python -m vaefast` and the `vaefast` console script (setup.py's entry point)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
