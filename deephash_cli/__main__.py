from deephash_cli.cli import main

main()
