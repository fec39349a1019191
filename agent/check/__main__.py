"""`python -m agent.check` == `gateway-check`."""

import sys

from agent.check import main

sys.exit(main())
