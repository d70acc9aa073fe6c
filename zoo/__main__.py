"""``python -m zoo``: the ``zoo`` command line."""
from .cli import main

if __name__ == "__main__":
    main()
