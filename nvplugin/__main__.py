"""`python -m nvplugin`: the same as `nvidia-docker-plugin`."""

import sys

from nvplugin.cli.main import main

sys.exit(main())
