"""`python -m llmlab <verb>`: the same CLI as `llmlab <verb>` (and the module torchrun runs)."""

import sys

from llmlab.cli import main

sys.exit(main())
