import sys

from deephash_cli.cli import main

# `python -m deephash_cli` is the `deephash` command: artifacts record it under that name, a command line that
# reruns as it stands (argv[0] would be .../deephash_cli/__main__.py).
sys.argv[0] = "deephash"
main()
