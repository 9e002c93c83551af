from jobkit.cli.main import main

main()
