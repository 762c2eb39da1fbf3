"""`python -m urbanseg ...` (what torchrun launches): the same as the `urbanseg` command."""
import sys

from .cli import main

sys.exit(main())
