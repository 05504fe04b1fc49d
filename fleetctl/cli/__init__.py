"""fleetctl's command line: a thin shell over the library."""


def main() -> None:  # replaced below once the app exists
    from fleetctl.cli.app import run

    run()
