"""`python -m budget_proxy`: the `budget` command line."""

from budget_proxy.cli import main

if __name__ == "__main__":
    main()
