"""`python -m nvplugin.wrapper`: the same as `nvidia-docker`."""

import sys

from nvplugin.wrapper.nvidia_docker import main

sys.exit(main())
