"""`python -m hhh ...`: the same as the `hhh` command (for where the script is not on PATH)."""

from hhh.cli import main

if __name__ == "__main__":
    main()
