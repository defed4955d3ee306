import sys

from legation.cli import main

sys.exit(main())
