"""`python -m mimistack ...`: the same program as `mimistack ...`."""

from .cli.main import entry

entry()
