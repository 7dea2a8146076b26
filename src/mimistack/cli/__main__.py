"""`python -m mimistack.cli ...`: the same program as `mimistack ...`."""

from .main import entry

entry()
