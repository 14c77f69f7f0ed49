from sooner.cli import main

main()
