from mrisr.cli import entry_point

entry_point()
