from sooner.cli import run

run()
