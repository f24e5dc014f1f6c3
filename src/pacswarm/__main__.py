import sys

from pacswarm.cli import main

sys.exit(main())
